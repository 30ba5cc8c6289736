//! The vault's process: the mesh's common start-up, then the vault's routes (see the library).

// jemalloc rather than glibc's malloc: each Get and Put allocates across both worker threads,
// and glibc spent about 8 % of the machine in malloc during Gets (most of it consolidating free
// lists). Measured in docs/BENCHMARKS.md: CPU per Get -5 %, Gets/s +6-8 %, idle RSS +1.5 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    orchestrator_mesh::service_main(orchestrator_mesh::Service::Vault, vault::routes)
}
