//! The seed's flow end to end (`/work/shared/seed`, "Summary of Flows"), with the four services
//! as real processes over mTLS on PostgreSQL against the GitHub and provider emulators:
//!
//! 1. a user creates a project with a bot token (pushed to GitHub's repository secrets) and a
//!    `vault` target for their own DigitalOcean key;
//! 2. the user stores that key in the vault;
//! 3. infra provisions a server with it (DEPLOY_* secrets handed to GitHub);
//! 4. the workflow the scaffolder committed runs as GitHub Actions would run it: each `run:`
//!    step with bash, `${{ secrets.X }}` substituted from the values the GitHub emulator
//!    decrypted, `GITHUB_ENV`/`GITHUB_OUTPUT` carried between steps, `if:` evaluated; its real
//!    OpenSSH client logs in to the emulated server under the pinned host key, where the
//!    deploy user's commands really run (`HostsConfig::run_commands`) and a stand-in `docker`
//!    records what the container would get: `BOT_TOKEN` from the env file.
//!
//! Afterwards a canary scan over every table of the test's database, every log of the started
//! processes and every file under the test's folders finds the bot token only where GitHub (the
//! emulator's secret store) and the server's env file hold it.
//!
//! What is played rather than real: GitHub's runner (this test: `uses:` steps are skipped, the
//! checkout included), `docker` on both sides (scripts), and the network path to the server
//! (the runner's `ssh` gets the emulated server's port and `HostKeyAlias`, as port 22 is not
//! ours to take).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orchestrator_e2e::{
    ORG, ProviderSetup, TestMesh, USERS_OWN_DO_TOKEN, droplet_provision, random_key,
    watch_operation,
};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::scaffolder::v1 as scaffolder;
use orchestrator_proto::vault::v1 as vault;
use orchestrator_provider_emulators as emu;
use serde_json::Value;

const REPO: &str = "seed-bot";
const HOSTNAME: &str = "seed-bot.orchestrator.test";
const WORKFLOW: &str = ".github/workflows/deploy.yml";

/// The server's docker: records its arguments; `load` keeps the image stream; `run` reads the
/// env file the way docker's `--env-file` does (one `NAME=value` a line) and records, for each
/// variable the container would get, its name and the SHA-256 of its value (so the value
/// itself is written nowhere else); `inspect` says the container runs.
const SERVER_DOCKER: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$HOME/docker.log"
case "$1" in
  load) cat > "$HOME/loaded-image" ;;
  run)
    env_file=""
    prev=""
    for arg in "$@"; do
      if [ "$prev" = "--env-file" ]; then env_file="$arg"; fi
      prev="$arg"
    done
    [ -n "$env_file" ] || { echo "docker run without --env-file" >&2; exit 1; }
    : > "$HOME/container.env"
    while IFS= read -r line; do
      name="${line%%=*}"
      value="${line#*=}"
      printf '%s %s\n' "$name" "$(printf '%s' "$value" | sha256sum | cut -d' ' -f1)" >> "$HOME/container.env"
    done < "$env_file"
    echo 0123456789ab ;;
  inspect) echo true ;;
esac
exit 0
"#;

/// The GitHub runner's docker: records its arguments; `save` writes a stand-in archive.
fn runner_docker(log: &Path) -> String {
    format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\ncase \"$1\" in\n  save) printf 'image-archive' ;;\nesac\nexit 0\n",
        log.display()
    )
}

/// The runner's ssh: the real OpenSSH client, told what the network would: the address the
/// host name resolves to (the A record at the Cloudflare emulator) and the emulated servers'
/// port; the host key is looked up under the host name, as on port 22 (OpenSSH would look up
/// `[host]:port` on another port).
fn runner_ssh(port: u16, host: &str, ip: &str) -> String {
    format!(
        "#!/bin/sh\nexec /usr/bin/ssh -p {port} -o HostName={ip} -o HostKeyAlias={host} \"$@\"\n"
    )
}

fn write_script(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn sha256_hex(value: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf '%s' \"$V\" | sha256sum | cut -d' ' -f1")
        .env("V", value)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A workflow step as GitHub reads it (PyYAML: the YAML document as JSON).
#[derive(Debug)]
struct Step {
    name: String,
    id: Option<String>,
    condition: Option<String>,
    env: BTreeMap<String, String>,
    run: Option<String>,
}

struct Workflow {
    env: BTreeMap<String, String>,
    steps: Vec<Step>,
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

fn parse_workflow(text: &str, scratch: &Path) -> Workflow {
    let path = scratch.join("workflow.yml");
    fs::write(&path, text).unwrap();
    let venv = PathBuf::from(std::env::var_os("HOME").unwrap())
        .join(".cache/orchestrator/sdk-venv/bin/python");
    let python = if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let out = Command::new(python)
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(&path).unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = doc["jobs"].as_object().unwrap();
    assert_eq!(jobs.len(), 1, "one job");
    let job = jobs.values().next().unwrap();
    assert!(job.get("env").is_none(), "a job env would need evaluating");
    let steps = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Step {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            id: s["id"].as_str().map(str::to_owned),
            condition: s["if"].as_str().map(str::to_owned),
            env: strings(&s["env"]),
            run: s["run"].as_str().map(str::to_owned),
        })
        .collect();
    Workflow {
        env: strings(&doc["env"]),
        steps,
    }
}

/// Plays GitHub's runner for one job: a folder with RUNNER_TEMP, GITHUB_ENV, GITHUB_OUTPUT per
/// step, the stand-ins first on PATH.
struct Runner {
    dir: PathBuf,
    bin: PathBuf,
    sha: &'static str,
    outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// `::add-mask::` values the steps asked the runner to mask.
    masked: Vec<String>,
    /// Every line the steps printed (stdout and stderr), as the job's log would show them.
    printed: Vec<String>,
}

impl Runner {
    /// `${{ secrets.NAME }}` as GitHub substitutes it (an unset secret is empty); any other
    /// expression is not expected in an env value.
    fn substitute(value: &str, secrets: &dyn Fn(&str) -> Option<String>, sha: &str) -> String {
        let value = value.replace("${{ github.sha }}", sha);
        if let Some(name) = value
            .strip_prefix("${{ secrets.")
            .and_then(|v| v.strip_suffix(" }}"))
        {
            return secrets(name).unwrap_or_default();
        }
        assert!(
            !value.contains("${{"),
            "an expression this runner does not evaluate: {value}"
        );
        value
    }

    fn wanted(&self, step: &Step, failed: bool) -> bool {
        match step.condition.as_deref() {
            None => !failed,
            Some("always()") => true,
            Some("steps.config.outputs.deploy == 'true'") => {
                !failed
                    && self
                        .outputs
                        .get("config")
                        .and_then(|o| o.get("deploy"))
                        .is_some_and(|d| d == "true")
            }
            Some(other) => panic!("an `if:` this runner does not evaluate: {other}"),
        }
    }

    /// Runs every step of `wf` in order, as the runner does: `shell: bash` is `bash --noprofile
    /// --norc -eo pipefail {0}`; after a failure only `always()` steps run. Returns the names
    /// of the steps that ran and whether the job failed.
    fn run_job(
        &mut self,
        wf: &Workflow,
        secrets: &dyn Fn(&str) -> Option<String>,
    ) -> (Vec<String>, bool) {
        let github_env = self.dir.join("github-env");
        let mut ran = Vec::new();
        let mut failed = false;
        for step in &wf.steps {
            let Some(script) = &step.run else {
                continue; // `uses:` (the checkout): the workspace is this folder.
            };
            if !self.wanted(step, failed) {
                continue;
            }
            let output_file = self.dir.join("github-output");
            fs::write(&output_file, "").unwrap();
            let script_file = self.dir.join("step.sh");
            fs::write(&script_file, script).unwrap();
            let path = format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.display());
            let mut cmd = Command::new("bash");
            cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
                .arg(&script_file)
                .current_dir(&self.dir)
                .env_clear()
                .env("HOME", &self.dir)
                .env("PATH", path)
                .env("RUNNER_TEMP", self.dir.join("temp"))
                .env("GITHUB_ENV", &github_env)
                .env("GITHUB_OUTPUT", &output_file);
            for (k, v) in &wf.env {
                cmd.env(k, Self::substitute(v, secrets, self.sha));
            }
            for line in fs::read_to_string(&github_env).unwrap_or_default().lines() {
                let (k, v) = line.split_once('=').unwrap();
                cmd.env(k, v);
            }
            for (k, v) in &step.env {
                cmd.env(k, Self::substitute(v, secrets, self.sha));
            }
            let out = cmd.output().unwrap();
            fs::remove_file(&script_file).unwrap();
            for stream in [&out.stdout, &out.stderr] {
                for line in String::from_utf8_lossy(stream).lines() {
                    if let Some(value) = line.strip_prefix("::add-mask::") {
                        self.masked.push(value.to_owned());
                    }
                    self.printed.push(format!("{}: {line}", step.name));
                }
            }
            if let Some(id) = &step.id {
                let outputs = fs::read_to_string(&output_file)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                self.outputs.insert(id.clone(), outputs);
            }
            ran.push(step.name.clone());
            if !out.status.success() {
                self.printed
                    .push(format!("{}: failed ({})", step.name, out.status));
                failed = true;
            }
        }
        let _ = fs::remove_file(self.dir.join("github-output"));
        (ran, failed)
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_under(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// Whether `haystack` holds `needle` as text or as the lower-case hex PostgreSQL shows bytes in.
fn holds(haystack: &[u8], needle: &str) -> bool {
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
        || haystack
            .windows(hex.len())
            .any(|w| w.eq_ignore_ascii_case(hex.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_flow_deploys_the_bot_token_to_the_container_and_nowhere_else() {
    let canary = format!("7391524680:AAE-seed-canary-{}", random_key());
    let servers = tempfile::tempdir().unwrap();
    write_script(&servers.path().join("bin/docker"), SERVER_DOCKER);
    let mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(ProviderSetup {
            hosts: emu::HostsConfig {
                run_commands: Some(emu::RunCommands {
                    users: vec!["deploy".into()],
                    root: servers.path().to_path_buf(),
                }),
                ..emu::HostsConfig::default()
            },
            ..ProviderSetup::default()
        })
        .service(Service::Vault)
        .service(Service::SecretBroker)
        .service(Service::Scaffolder)
        .service(Service::Infra)
        .env(Service::Infra, "INFRA_READY_TIMEOUT_SECS", "60")
        .start()
        .await;

    // 1. The project: its bot token straight to GitHub, its DigitalOcean key from the vault.
    let github_target = |name: &str| common::SecretTarget {
        target: Some(common::secret_target::Target::GithubSecret(
            common::GitHubSecretTarget {
                name: name.into(),
                location: None,
            },
        )),
    };
    let vault_target = common::SecretTarget {
        target: Some(common::secret_target::Target::VaultEntry(
            common::VaultEntryRef {
                user_id: "u1".into(),
                key: "digitalocean".into(),
                version: 0,
            },
        )),
    };
    let created = mesh
        .scaffolder_as("api")
        .await
        .create_project(scaffolder::CreateProjectRequest {
            request_id: "seed-create".into(),
            name: REPO.into(),
            user_id: "u1".into(),
            template: scaffolder::ProjectTemplate::DockerSsh as i32,
            secrets_ref: Some(common::SecretsRef {
                entries: [
                    ("bot_token".to_owned(), github_target("TELEGRAM_TOKEN")),
                    ("do".to_owned(), vault_target),
                ]
                .into(),
            }),
            initial_secrets: vec![common::ProjectSecretValue {
                name: "TELEGRAM_TOKEN".into(),
                value: canary.as_bytes().to_vec(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let project_id = created.project.unwrap().id;
    assert_eq!(
        mesh.github().secret(ORG, REPO, "TELEGRAM_TOKEN").unwrap(),
        canary.as_bytes()
    );

    // 2. The user's own DigitalOcean key, into the vault.
    mesh.vault_as("api")
        .await
        .put_user_secret(vault::PutUserSecretRequest {
            user_id: "u1".into(),
            key: "digitalocean".into(),
            value: USERS_OWN_DO_TOKEN.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();

    // 3. The server, bought with that key.
    let mut infra = mesh.infra_as("api").await;
    let mut provision = droplet_provision("seed-provision", &project_id, HOSTNAME);
    provision.provider_credentials = Some(pb::CredentialSource {
        source: Some(pb::credential_source::Source::UserVault(
            common::VaultEntryRef {
                user_id: "u1".into(),
                key: "digitalocean".into(),
                version: 0,
            },
        )),
    });
    let op = infra
        .provision_server(provision)
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let seen = watch_operation(&mut infra, &op.id, Duration::from_secs(120)).await;
    assert_eq!(
        seen.last().map(|o| o.state),
        Some(pb::OperationState::Succeeded as i32),
        "{:?}\n{}",
        seen.last(),
        mesh.logs(Service::Infra)
    );
    let droplets = mesh.digitalocean().live_droplets();
    assert_eq!(droplets.len(), 1);
    assert_eq!(droplets[0].token_used, USERS_OWN_DO_TOKEN);
    let records = mesh.cloudflare().records();
    assert_eq!(records.len(), 1);
    // The emulated zone proxies records by default: infra's own `proxied: false` keeps SSH
    // reachable at the address.
    assert!(!records[0].proxied, "the A record goes through the proxy");
    let ip = records[0].content.clone();
    let secret = |name: &str| {
        mesh.github()
            .secret(ORG, REPO, name)
            .map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(records[0].name, HOSTNAME);
    assert_eq!(secret("DEPLOY_HOST").as_deref(), Some(HOSTNAME));

    // 4. A push to main: the committed workflow, run as GitHub Actions runs it.
    let workflow = String::from_utf8(mesh.github().file(ORG, REPO, WORKFLOW).unwrap()).unwrap();
    assert!(workflow.contains("${{ secrets.TELEGRAM_TOKEN }}"));
    assert!(!workflow.contains(&canary));
    let runner_dir = tempfile::tempdir().unwrap();
    let bin = runner_dir.path().join("bin");
    let runner_docker_log = runner_dir.path().join("runner-docker.log");
    write_script(&bin.join("docker"), &runner_docker(&runner_docker_log));
    write_script(
        &bin.join("ssh"),
        &runner_ssh(mesh.ssh_port(), HOSTNAME, &ip),
    );
    let work = runner_dir.path().join("work");
    fs::create_dir_all(work.join("temp")).unwrap();
    let wf = parse_workflow(&workflow, runner_dir.path());
    let mut runner = Runner {
        dir: work.clone(),
        bin,
        sha: "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed",
        outputs: BTreeMap::new(),
        masked: Vec::new(),
        printed: Vec::new(),
    };
    let (ran, failed) = runner.run_job(&wf, &secret);
    assert!(!failed, "the job failed:\n{}", runner.printed.join("\n"));
    assert_eq!(
        ran,
        [
            "Build the image",
            "Check the deploy configuration",
            "Set up SSH with the pinned host key",
            "Write the app's env file",
            "Ship the image and restart the container",
            "Remove the key and the env file from the runner",
        ]
    );

    // The build got the token as a BuildKit secret, by name: never a build argument.
    let built = fs::read_to_string(&runner_docker_log).unwrap();
    assert!(
        built.lines().any(|l| l.starts_with("build ")
            && l.contains("--secret id=BOT_TOKEN,env=APP_SECRET_BOT_TOKEN")
            && !l.contains("--build-arg")),
        "{built}"
    );

    // On the server: the image loaded, the env file 0600 with the token, and the container
    // started from it with BOT_TOKEN (the stand-in recorded the value's digest).
    let home = servers.path().join(&ip).join("deploy");
    let app = "seed-bot";
    let env_file = home.join(format!("apps/{app}/app.env"));
    assert_eq!(
        fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_to_string(&env_file).unwrap(),
        format!("BOT_TOKEN={canary}\n")
    );
    assert_eq!(
        fs::read(home.join("loaded-image")).unwrap()[..2],
        [0x1f, 0x8b],
        "docker load got the gzip stream"
    );
    let docker_log = fs::read_to_string(home.join("docker.log")).unwrap();
    let image = format!("{app}:{}", runner.sha);
    assert!(
        docker_log.lines().any(|l| l
            == format!(
                "run --detach --name {app} --restart unless-stopped --env-file {} {image}",
                env_file.display()
            )),
        "{docker_log}"
    );
    assert_eq!(
        fs::read_to_string(home.join("container.env")).unwrap(),
        format!("BOT_TOKEN {}\n", sha256_hex(&canary)),
        "the container does not get BOT_TOKEN from the env file"
    );
    // The deploy logged in as the deploy user only, and nothing it sent was run as another.
    let execs = mesh.digitalocean().commands(droplets[0].id);
    assert!(
        execs
            .iter()
            .any(|e| e.user == "deploy" && e.command == "docker load")
    );

    // The job's log shows the value only in the mask command the runner consumes.
    assert!(runner.masked.contains(&canary));
    for line in &runner.printed {
        assert!(
            !line.contains(&canary) || line.ends_with(&format!("::add-mask::{canary}")),
            "printed: {line}"
        );
    }

    // 5. The canary scan (findings name what was found, not the value).
    let needles = [
        ("the bot token", canary.as_str()),
        ("the user's DigitalOcean key", USERS_OWN_DO_TOKEN),
    ];
    let mut found = Vec::new();
    // Every table of every schema of the test's database.
    let tables = mesh
        .dba_dumps(
            Service::Vault,
            "SELECT table_schema || '.' || table_name AS dump FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
             AND table_type = 'BASE TABLE'",
        )
        .await;
    assert!(tables.len() > 10, "{tables:?}");
    for table in &tables {
        let sql = format!("SELECT CAST(t AS TEXT) AS dump FROM {table} t");
        for row in mesh.dba_dumps(Service::Vault, &sql).await {
            for (what, needle) in needles {
                if holds(row.as_bytes(), needle) {
                    found.push(format!("table {table}: {what}"));
                }
            }
        }
    }
    // Every log of the started processes.
    for service in Service::ALL {
        let logs = mesh.logs(service);
        assert!(!logs.is_empty(), "{service} logged nothing");
        for (what, needle) in needles {
            if holds(logs.as_bytes(), needle) {
                found.push(format!("{service}'s log: {what}"));
            }
        }
    }
    // Every file under the test's folders: the mesh's, the runner's, the server's.
    let mut files = Vec::new();
    for dir in mesh.dirs().into_iter().chain([
        runner_dir.path().to_path_buf(),
        servers.path().to_path_buf(),
    ]) {
        files_under(&dir, &mut files);
    }
    assert!(files.len() > 20, "{files:?}");
    for file in &files {
        let bytes = fs::read(file).unwrap();
        for (what, needle) in needles {
            if holds(&bytes, needle) && !(needle == canary && *file == env_file) {
                found.push(format!("{}: {what}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "values where they must never be:\n{}",
        found.join("\n")
    );
    // Where it must be: GitHub's secret store and the server's env file.
    assert_eq!(secret("TELEGRAM_TOKEN").as_deref(), Some(canary.as_str()));
    assert!(holds(&fs::read(&env_file).unwrap(), &canary));
}
