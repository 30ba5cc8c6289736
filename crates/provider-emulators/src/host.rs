//! The servers the emulated providers "boot", as infra meets them over SSH: an SSH daemon on
//! the server's own loopback address that serves the server's host key, lets in exactly the
//! users and keys the server was given (cloud-init `users`, or root with the Time4VPS
//! reinstall's `ssh_key`), and answers `cloud-init status --wait` once boot is over.
//!
//! Every other command is recorded (user, command line, stdin) and answers exit 0 without
//! running anything: a test machine must not become the server. Tests read the record. Only
//! when a test asks for it ([`HostsConfig::run_commands`]) are the commands of the named login
//! users really run, in a folder of the test's that plays their home, with the test's
//! stand-ins (say, a `docker` script) first on PATH: what a deploy over SSH needs to be run
//! end to end.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, Server as _, Session};
use russh::{Channel, ChannelId};

use crate::core::{lock, random_bytes};

/// How the emulated providers boot servers.
#[derive(Debug, Clone, Default)]
pub struct HostsConfig {
    /// The port each server's SSH daemon listens on (on the server's own loopback address).
    pub ssh_port: u16,
    /// How long cloud-init runs after the server has its address (`status --wait` blocks).
    pub boot_time: Duration,
    /// Something else answers at every droplet's address, with a host key of its own (a
    /// man in the middle, or a recycled address): what a pinned host key must refuse.
    pub impostor: bool,
    /// cloud-init fails on every droplet (`status: error`).
    pub cloud_init_fails: bool,
    /// Run these users' commands for real (see [`RunCommands`]); `None`: record them only.
    pub run_commands: Option<RunCommands>,
}

/// Whose commands a server really runs, and where: `sh -c <command>` with the command's stdin,
/// in `<root>/<server address>/<user>` (created; it is `HOME`), PATH `<root>/bin` first then
/// `/usr/bin:/bin`, an otherwise empty environment; stdout, stderr and the exit status go back
/// over the channel. For tests only: it runs whatever the login user sends, on this machine.
#[derive(Debug, Clone)]
pub struct RunCommands {
    /// Login users whose commands run (e.g. `deploy`); everyone else's are recorded only.
    pub users: Vec<String>,
    /// The folder under which each server's users get their homes; `bin` holds stand-ins.
    pub root: std::path::PathBuf,
}

impl RunCommands {
    /// `user`'s home on the server at `ip`.
    pub fn home(&self, ip: &str, user: &str) -> std::path::PathBuf {
        self.root.join(ip).join(user)
    }
}

/// One command a server was asked to run.
#[derive(Clone, PartialEq, Eq)]
pub struct Exec {
    pub user: String,
    pub command: String,
    /// What came over stdin: may hold a secret (a clone token), so `Debug` shows its length.
    pub stdin: Vec<u8>,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("user", &self.user)
            .field("command", &self.command)
            .field("stdin_len", &self.stdin.len())
            .finish()
    }
}

/// What a server boots with.
#[derive(Debug)]
pub(crate) struct Boot {
    pub ip: IpAddr,
    /// The host key (OpenSSH private key text); `None` = a fresh one.
    pub host_key: Option<String>,
    /// Login name -> authorized public key lines.
    pub users: BTreeMap<String, Vec<String>>,
    /// Who may `sudo`.
    pub sudoers: Vec<String>,
    /// When the daemon starts answering.
    pub up_at: Instant,
    /// When `cloud-init status --wait` returns.
    pub ready_at: Instant,
    /// Whether the image has cloud-init (Time4VPS's have not: `command not found`).
    pub cloud_init: bool,
    /// cloud-init failed (unreadable user data): `status: error`.
    pub failed: bool,
    /// What cloud-init did, in the order its modules run: `bootcmd: <script>` first, then
    /// `users: <names>`, `ssh: host key <public key>`, `runcmd: <command>` (recorded, never
    /// run, like every command here).
    pub boot_log: Vec<String>,
}

/// A running server's SSH side; stops when dropped.
#[derive(Debug)]
pub(crate) struct Host {
    pub host_public: String,
    pub log: Arc<Mutex<Vec<Exec>>>,
    pub boot_log: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    /// Login name -> authorized keys; changed by the authorized-keys commands below.
    users: Mutex<BTreeMap<String, Vec<PublicKey>>>,
    /// Who may `sudo` (cloud-init users with a `sudo` rule; root).
    sudoers: Vec<String>,
    ready_at: Instant,
    cloud_init: bool,
    failed: bool,
    log: Arc<Mutex<Vec<Exec>>>,
    run: Option<RunCommands>,
    /// The server's address (its users' homes are under it, with `run`).
    ip: String,
}

/// What a droplet boots with, read from its user data the way cloud-init would: `users` (name
/// and `ssh_authorized_keys`; root only if `disable_root` is false) and the injected
/// `ssh_keys.ed25519_private`. User data that is not a `#cloud-config` document this emulator
/// can read (JSON, which is YAML) boots with no users and `status: error`.
pub(crate) fn from_cloud_init(
    ip: IpAddr,
    user_data: Option<&str>,
    up_at: Instant,
    ready_at: Instant,
) -> Boot {
    let config = user_data
        .and_then(|d| d.strip_prefix("#cloud-config\n"))
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
    let mut boot = Boot {
        ip,
        host_key: None,
        users: BTreeMap::new(),
        sudoers: Vec::new(),
        up_at,
        ready_at,
        cloud_init: true,
        failed: config.is_none(),
        boot_log: Vec::new(),
    };
    let Some(config) = config else { return boot };
    let commands = |module: &str| -> Vec<String> {
        config[module]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| match c {
                serde_json::Value::String(script) => script.clone(),
                argv => argv
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            })
            .collect()
    };
    for script in commands("bootcmd") {
        boot.boot_log.push(format!("bootcmd: {script}"));
    }
    boot.host_key = config["ssh_keys"]["ed25519_private"]
        .as_str()
        .map(str::to_owned);
    let root_allowed = config["disable_root"] == serde_json::Value::Bool(false);
    for user in config["users"].as_array().into_iter().flatten() {
        let Some(name) = user["name"].as_str() else {
            continue;
        };
        if name == "root" && !root_allowed {
            continue;
        }
        let keys = user["ssh_authorized_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        if !user["sudo"].is_null() {
            boot.sudoers.push(name.to_owned());
        }
        boot.users.insert(name.to_owned(), keys);
    }
    let names: Vec<&str> = boot.users.keys().map(String::as_str).collect();
    boot.boot_log.push(format!("users: {}", names.join(" ")));
    if let Some(public) = config["ssh_keys"]["ed25519_public"].as_str() {
        boot.boot_log.push(format!("ssh: host key {public}"));
    }
    for command in commands("runcmd") {
        boot.boot_log.push(format!("runcmd: {command}"));
    }
    boot
}

/// Starts `boot`'s SSH daemon on `boot.ip:port` (at `boot.up_at`), running the commands
/// `run` names.
pub(crate) fn start(boot: Boot, port: u16, run: Option<RunCommands>) -> anyhow::Result<Host> {
    let key = match &boot.host_key {
        Some(text) => PrivateKey::from_openssh(text)?,
        None => PrivateKey::new(Ed25519Keypair::from_seed(&random_bytes()).into(), "")?,
    };
    let mut public = key.public_key().clone();
    public.set_comment("");
    let host_public = public.to_openssh()?;
    let users = boot
        .users
        .iter()
        .map(|(name, keys)| {
            let keys = keys
                .iter()
                .filter_map(|k| PublicKey::from_openssh(k).ok())
                .collect();
            (name.clone(), keys)
        })
        .collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared {
        users: Mutex::new(users),
        sudoers: boot.sudoers.clone(),
        ready_at: boot.ready_at,
        cloud_init: boot.cloud_init,
        failed: boot.failed,
        log: log.clone(),
        run,
        ip: boot.ip.to_string(),
    });
    let config = Arc::new(server::Config {
        keys: vec![key],
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let addr = SocketAddr::new(boot.ip, port);
    let up_at = boot.up_at;
    let task = tokio::spawn(async move {
        tokio::time::sleep_until(up_at.into()).await;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "emulated server cannot listen for SSH");
                return;
            }
        };
        let mut daemon = Daemon { shared };
        let _ = daemon.run_on_socket(config, &listener).await;
    });
    Ok(Host {
        host_public,
        log,
        boot_log: boot.boot_log,
        task,
    })
}

impl Shared {
    /// The two authorized-keys edits infra makes (as a sudoer, for another user, the key lines
    /// on stdin) change who gets in, as on a real server: `cat >> authorized_keys` adds,
    /// writing `authorized_keys.new` and renaming it replaces. Any other command changes
    /// nothing. Returns the exit status.
    fn authorized_keys(&self, user: &str, command: &str, stdin: &[u8]) -> u32 {
        const ADD: &str = r#" -H sh -c 'cat >> "$HOME/.ssh/authorized_keys"'"#;
        const REPLACE: &str = r#" -H sh -c 'cat > "$HOME/.ssh/authorized_keys.new" && mv "$HOME/.ssh/authorized_keys.new" "$HOME/.ssh/authorized_keys"'"#;
        let Some(rest) = command.strip_prefix("sudo -u ") else {
            return 0;
        };
        let (target, replace) = if let Some(t) = rest.strip_suffix(ADD) {
            (t, false)
        } else if let Some(t) = rest.strip_suffix(REPLACE) {
            (t, true)
        } else {
            return 0;
        };
        if !self.sudoers.iter().any(|s| s == user) {
            return 1;
        }
        let keys: Vec<PublicKey> = String::from_utf8_lossy(stdin)
            .lines()
            .filter_map(|l| PublicKey::from_openssh(l.trim()).ok())
            .collect();
        let mut users = lock(&self.users);
        let Some(authorized) = users.get_mut(target) else {
            return 1;
        };
        if replace {
            authorized.clear();
        }
        authorized.extend(keys);
        0
    }
}

#[derive(Clone)]
struct Daemon {
    shared: Arc<Shared>,
}

impl server::Server for Daemon {
    type Handler = Connection;
    fn new_client(&mut self, _: Option<SocketAddr>) -> Connection {
        Connection {
            shared: self.shared.clone(),
            user: String::new(),
            pending: BTreeMap::new(),
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    user: String,
    /// Per channel: the command and the stdin received so far.
    pending: BTreeMap<ChannelId, (String, Vec<u8>)>,
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let allowed = lock(&self.shared.users).get(user).is_some_and(|keys| {
            keys.iter()
                .any(|k| k.key_data() == key.public_key.key_data())
        });
        if allowed {
            self.user = user.to_owned();
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pending.insert(
            channel,
            (String::from_utf8_lossy(data).into_owned(), Vec::new()),
        );
        session.channel_success(channel)?;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((_, stdin)) = self.pending.get_mut(&channel) {
            stdin.extend_from_slice(data);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((command, stdin)) = self.pending.remove(&channel) else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let user = self.user.clone();
        let handle = session.handle();
        // Answered from a task: `cloud-init status --wait` blocks until boot is over.
        tokio::spawn(async move {
            let mut err = Vec::new();
            let (status, out) = if command.split_whitespace().next() == Some("cloud-init")
                && !shared.cloud_init
            {
                (127, Vec::new())
            } else if command.trim() == "cloud-init status --wait" {
                tokio::time::sleep_until(shared.ready_at.into()).await;
                if shared.failed {
                    (1, b"status: error\n".to_vec())
                } else {
                    (0, b"status: done\n".to_vec())
                }
            } else if let Some(run) = shared.run.as_ref().filter(|r| r.users.contains(&user)) {
                let home = run.home(&shared.ip, &user);
                let (status, out, stderr) = run_command(run, &home, &user, &command, &stdin).await;
                lock(&shared.log).push(Exec {
                    user,
                    command,
                    stdin,
                });
                err = stderr;
                (status, out)
            } else {
                let status = shared.authorized_keys(&user, &command, &stdin);
                lock(&shared.log).push(Exec {
                    user,
                    command,
                    stdin,
                });
                (status, Vec::new())
            };
            if !out.is_empty() {
                let _ = handle.data(channel, out).await;
            }
            if !err.is_empty() {
                let _ = handle.extended_data(channel, 1, err).await;
            }
            let _ = handle.exit_status_request(channel, status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}

/// Runs `command` as [`RunCommands`] says: `sh -c` in `home`, stdin written while the output is
/// read. Returns the exit status (255 when it could not start), stdout and stderr.
async fn run_command(
    run: &RunCommands,
    home: &std::path::Path,
    user: &str,
    command: &str,
    stdin: &[u8],
) -> (u32, Vec<u8>, Vec<u8>) {
    use tokio::io::AsyncWriteExt as _;
    if let Err(e) = std::fs::create_dir_all(home) {
        return (
            255,
            Vec::new(),
            format!("no home {}: {e}\n", home.display()).into_bytes(),
        );
    }
    let path = format!("{}:/usr/bin:/bin", run.root.join("bin").display());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(home)
        .env_clear()
        .env("HOME", home)
        .env("PATH", path)
        .env("USER", user)
        .env("LOGNAME", user)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (255, Vec::new(), format!("sh: {e}\n").into_bytes()),
    };
    if let Some(mut input) = child.stdin.take() {
        let stdin = stdin.to_vec();
        // A command that never reads its stdin closes it: the write fails, which is fine.
        tokio::spawn(async move {
            let _ = input.write_all(&stdin).await;
        });
    }
    match child.wait_with_output().await {
        Ok(out) => (
            out.status
                .code()
                .map_or(255, |c| u32::try_from(c).unwrap_or(255)),
            out.stdout,
            out.stderr,
        ),
        Err(e) => (255, Vec::new(), format!("sh: {e}\n").into_bytes()),
    }
}
