//! [`TestMesh`]: everything a cross-process test runs against, from one description: a
//! throwaway PKI, a database (a SQLite file per service, or a fresh PostgreSQL database with a
//! role and schema per service), the emulators it talks to, the service processes started in
//! dependency order with their peers wired, and typed clients presenting any identity.
//!
//! A test harness: a step that fails panics, saying what failed.

use std::collections::HashMap;
use std::process::Output;

use orchestrator_devenv::{DevSecrets, START_ORDER, Secret};
use orchestrator_github_emulator::testing::ORG;
use orchestrator_github_emulator::{Config as GitHubConfig, Emulator};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_proto::scaffolder::v1::scaffolder_service_client::ScaffolderServiceClient;
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
use orchestrator_store::testing::TestDatabase;
use tonic::transport::Channel;

use crate::providers::{ProviderEmulators, ProviderSetup};
use crate::{Launch, Pki, Proc, bin, github_emulator};

/// What a test's mesh is made of; [`MeshBuilder::start`] starts it.
#[derive(Debug, Default)]
pub struct MeshBuilder {
    services: Vec<Service>,
    database: Database,
    github: Option<GitHubConfig>,
    providers: Option<ProviderSetup>,
    settings: HashMap<Service, Vec<(String, String)>>,
}

#[derive(Debug, Default)]
enum Database {
    /// A SQLite file per service.
    #[default]
    Sqlite,
    /// A fresh PostgreSQL database with a role and schema for every service.
    Postgres,
    Given(TestDatabase),
}

impl MeshBuilder {
    /// Runs `service` (the mesh starts its services in dependency order).
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// A fresh PostgreSQL database, with a login role and a schema for every service.
    pub fn postgres(mut self) -> Self {
        self.database = Database::Postgres;
        self
    }

    /// `db` instead (on a [`orchestrator_store::testing::PgCluster`] of its own, say).
    pub fn database(mut self, db: TestDatabase) -> Self {
        self.database = Database::Given(db);
        self
    }

    /// A GitHub emulator with `config`, trusting the tests' App, installed on [`ORG`]; the
    /// broker and the scaffolder use it, and infra clones from it.
    pub fn github(mut self, config: GitHubConfig) -> Self {
        self.github = Some(config);
        self
    }

    /// The provider emulators, behaving as `setup` says; infra uses them.
    pub fn providers(mut self, setup: ProviderSetup) -> Self {
        self.providers = Some(setup);
        self
    }

    /// A setting of `service`, at every start.
    pub fn env(mut self, service: Service, var: &str, value: impl Into<String>) -> Self {
        self.settings
            .entry(service)
            .or_default()
            .push((var.to_owned(), value.into()));
        self
    }

    pub async fn start(self) -> TestMesh {
        let pki = Pki::new().expect("a throwaway PKI");
        let secrets_dir = tempfile::tempdir().expect("a folder for the services' keys");
        let secrets = DevSecrets::new(secrets_dir.path());
        let db = match self.database {
            Database::Sqlite => TestDatabase::sqlite(),
            Database::Postgres => TestDatabase::postgres(&Service::ALL.map(Service::name)).await,
            Database::Given(db) => db,
        };
        let github = match self.github {
            Some(config) => Some(
                github_emulator(ORG, config)
                    .await
                    .expect("the GitHub emulator starts"),
            ),
            None => None,
        };
        let providers = match self.providers {
            Some(setup) => {
                let providers = ProviderEmulators::start(setup)
                    .await
                    .expect("the provider emulators start");
                providers
                    .give_credentials(&secrets)
                    .expect("infra gets the providers' credentials");
                Some(providers)
            }
            None => None,
        };
        let mut mesh = TestMesh {
            procs: HashMap::new(),
            github,
            providers,
            settings: self.settings,
            db,
            secrets,
            secrets_dir,
            pki,
        };
        for service in START_ORDER {
            if self.services.contains(&service) {
                mesh.spawn(mesh.launch(service)).await;
            }
        }
        mesh
    }
}

/// A running mesh for one test; everything it started stops when it is dropped.
pub struct TestMesh {
    // Dropped in this order: the processes before what they use.
    procs: HashMap<Service, Proc>,
    github: Option<Emulator>,
    providers: Option<ProviderEmulators>,
    settings: HashMap<Service, Vec<(String, String)>>,
    db: TestDatabase,
    secrets: DevSecrets,
    secrets_dir: tempfile::TempDir,
    pki: Pki,
}

impl std::fmt::Debug for TestMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestMesh")
            .field("procs", &self.procs)
            .field("github", &self.github.as_ref().map(Emulator::url))
            .field("providers", &self.providers)
            .field("db", &self.db)
            .field("pki", &self.pki)
            .finish_non_exhaustive()
    }
}

impl TestMesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn db(&self) -> &TestDatabase {
        &self.db
    }

    /// The services' keys, the same across restarts.
    pub fn secrets(&self) -> &DevSecrets {
        &self.secrets
    }

    /// The value of one of the services' keys.
    pub fn secret(&self, secret: Secret) -> String {
        self.secrets
            .value(secret)
            .unwrap_or_else(|e| panic!("{secret:?}: {e:#}"))
    }

    /// Every folder the mesh wrote to: the PKI, the services' keys, and each process's folder
    /// (its logs); for tests that search everything on disk for a value.
    pub fn dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs = vec![
            self.pki.dir().to_path_buf(),
            self.secrets_dir.path().to_path_buf(),
        ];
        dirs.extend(self.procs.values().map(|p| p.dir().to_path_buf()));
        dirs
    }

    pub fn github(&self) -> &Emulator {
        self.github.as_ref().expect("a mesh built with .github(..)")
    }

    pub fn providers(&self) -> &ProviderEmulators {
        self.providers
            .as_ref()
            .expect("a mesh built with .providers(..)")
    }

    /// The mesh's process of `service`.
    pub fn proc(&self, service: Service) -> &Proc {
        self.procs
            .get(&service)
            .unwrap_or_else(|| panic!("{service} is not part of this mesh"))
    }

    pub fn proc_mut(&mut self, service: Service) -> &mut Proc {
        self.procs
            .get_mut(&service)
            .unwrap_or_else(|| panic!("{service} is not part of this mesh"))
    }

    /// Everything `service` printed so far.
    pub fn logs(&self, service: Service) -> String {
        self.proc(service).logs()
    }

    /// How the mesh starts `service`: its database, its keys (the same at every start), the
    /// emulators, where its running peers listen, and the settings it was built with.
    pub fn launch(&self, service: Service) -> Launch {
        let mut launch = Launch::with_secrets(service, &self.pki, &self.secrets)
            .expect("the service's keys")
            .test_database(&self.db);
        if let Some(github) = &self.github {
            let url = github.url();
            launch = launch.with_env(|env| env.github_api(&url).git_url(&url));
        }
        if let Some(providers) = &self.providers {
            launch = launch
                .providers(&providers.apis(), &self.secrets)
                .expect("infra's provider credentials");
        }
        let peers: Vec<Service> = launch.dependencies().collect();
        for peer in peers {
            if let Some(proc) = self.procs.get(&peer) {
                launch = launch.peer(proc);
            }
        }
        for (var, value) in self.settings.get(&service).into_iter().flatten() {
            launch = launch.env(var, value.clone());
        }
        launch
    }

    /// Starts `launch` as the mesh's process of its service, in place of the one before.
    pub async fn spawn(&mut self, launch: Launch) {
        let service = launch.service();
        let proc = launch
            .spawn()
            .await
            .unwrap_or_else(|e| panic!("{service} did not start: {e:#}"));
        self.procs.insert(service, proc);
    }

    /// SIGKILLs `service`, as a crash.
    pub async fn kill(&mut self, service: Service) {
        self.proc_mut(service).kill().await;
    }

    /// Kills `service` and starts it again (same database, keys and settings, a new port).
    pub async fn restart(&mut self, service: Service) {
        self.kill(service).await;
        self.spawn(self.launch(service)).await;
    }

    /// Kills `service` (SIGKILL, a crash) and, after `down`, starts it again on the same
    /// address, as a supervisor would: its peers' channels reconnect to it.
    pub async fn crash_and_restart(&mut self, service: Service, down: std::time::Duration) {
        let addr = self.proc(service).grpc;
        self.kill(service).await;
        tokio::time::sleep(down).await;
        self.spawn(self.launch(service).at(addr)).await;
    }

    /// A channel to the mesh's `service` as `identity`.
    pub async fn channel(&self, service: Service, identity: &str) -> Channel {
        self.channel_to(self.proc(service), identity).await
    }

    /// A channel to `proc` (the mesh's or another) as `identity`.
    pub async fn channel_to(&self, proc: &Proc, identity: &str) -> Channel {
        let tls = self
            .pki
            .client(identity)
            .unwrap_or_else(|e| panic!("{identity}'s certificate: {e:#}"));
        proc.channel(&tls)
            .await
            .unwrap_or_else(|e| panic!("no channel to {} as {identity}: {e:#}", proc.service))
    }

    pub async fn vault_as(&self, identity: &str) -> VaultServiceClient<Channel> {
        VaultServiceClient::new(self.channel(Service::Vault, identity).await)
    }

    pub async fn broker_as(&self, identity: &str) -> SecretBrokerServiceClient<Channel> {
        SecretBrokerServiceClient::new(self.channel(Service::SecretBroker, identity).await)
    }

    pub async fn infra_as(&self, identity: &str) -> InfraServiceClient<Channel> {
        InfraServiceClient::new(self.channel(Service::Infra, identity).await)
    }

    pub async fn scaffolder_as(&self, identity: &str) -> ScaffolderServiceClient<Channel> {
        ScaffolderServiceClient::new(self.channel(Service::Scaffolder, identity).await)
    }

    /// Creates `repo` in [`ORG`] at the GitHub emulator and registers it for `project_id` at
    /// the broker, as the scaffolder does.
    pub async fn register_repository(&self, project_id: &str, repo: &str) {
        self.github().create_repository(ORG, repo);
        self.broker_as("scaffolder")
            .await
            .register_repository(broker::RegisterRepositoryRequest {
                request_id: format!("register-{project_id}"),
                project_id: project_id.into(),
                repository: Some(common::RepositoryRef {
                    owner: ORG.into(),
                    name: repo.into(),
                    id: 0,
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("{repo} is not registered for {project_id}: {e:?}"));
    }

    /// Creates project `name` (repository `name` in [`ORG`]) owned by `user` through the
    /// scaffolder, as `api`, with one vault entry of `secrets_ref` per `(abstract key, user, vault
    /// key)` of `vault_entries`; the project's id.
    pub async fn create_project(
        &self,
        user: &str,
        name: &str,
        vault_entries: &[(&str, &str, &str)],
    ) -> Result<String, tonic::Status> {
        use orchestrator_proto::scaffolder::v1 as scaffolder;
        let entries = vault_entries
            .iter()
            .map(|(abstract_key, user_id, key)| {
                let target = common::secret_target::Target::VaultEntry(common::VaultEntryRef {
                    user_id: (*user_id).into(),
                    key: (*key).into(),
                    version: 0,
                });
                let target = common::SecretTarget {
                    target: Some(target),
                };
                ((*abstract_key).to_owned(), target)
            })
            .collect();
        let project = self
            .scaffolder_as("api")
            .await
            .create_project(scaffolder::CreateProjectRequest {
                request_id: format!("create-{name}"),
                name: name.into(),
                user_id: user.into(),
                template: scaffolder::ProjectTemplate::DockerSsh as i32,
                secrets_ref: Some(common::SecretsRef { entries }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .project
            .expect("CreateProject answers with the project");
        Ok(project.id)
    }

    /// Runs `orchctl args` against the mesh's `target`, with the mesh's PKI (as `api`, unless
    /// `args` say otherwise). Async: the emulators run on the test's runtime and must keep
    /// answering meanwhile.
    pub async fn orchctl(&self, target: Service, args: &[&str]) -> Output {
        tokio::process::Command::new(bin("orchctl"))
            .args(args)
            .arg("--pki")
            .arg(self.pki.dir())
            .arg("--target")
            .arg(self.proc(target).grpc.to_string())
            .output()
            .await
            .expect("orchctl runs")
    }
}
