//! `sqlx::migrate!` embeds the migrations when this crate compiles: a migration added later
//! must rebuild it, or the binary would silently lack it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/vault");
}
