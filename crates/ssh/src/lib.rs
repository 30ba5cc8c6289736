//! The orchestrator's SSH client: infra's way onto a server it prepared, as the admin account,
//! to check that cloud-init finished, to finish a Time4VPS takeover and, later, to rotate the
//! deploy key.
//!
//! - The admin key (L1) is parsed once into an [`AdminKey`] and stays in memory: never written
//!   to a file, never on a command line, never in `Debug` output (only its fingerprint).
//! - The server's host key is **pinned** ([`HostKey::Pinned`]): a server that answers with
//!   another key is refused before authentication, with both fingerprints in the error. The
//!   one exception is the first contact with a Time4VPS server right after the reinstall infra
//!   asked for ([`HostKey::LearnOnFirstUse`]): the key seen then is returned, to be pinned from
//!   then on. Nothing ever trusts whatever answers at deploy time.
//! - Input that may be secret (a clone token) goes over the channel's stdin, never into the
//!   command line, where the server's process list would show it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use secrecy::{ExposeSecret as _, SecretString};

/// Why an SSH exchange failed. `Unreachable` and `AuthRefused` can be transient while a server
/// boots; `HostKeyMismatch` never is.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the admin key is not an OpenSSH private key")]
    Key,
    #[error("`{0}` is not an OpenSSH public key")]
    PublicKey(String),
    #[error("{addr} is not reachable over SSH: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} answered with host key {seen}, not the pinned {expected}: refusing to log in")]
    HostKeyMismatch {
        addr: String,
        expected: String,
        seen: String,
    },
    #[error("{addr} refused the admin key for user `{user}`")]
    AuthRefused { addr: String, user: String },
    #[error("SSH to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("SSH to {addr} failed: {reason}")]
    Protocol { addr: String, reason: String },
}

impl SshError {
    /// Whether trying again later can help (the server may still be booting).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Unreachable { .. }
                | SshError::AuthRefused { .. }
                | SshError::Timeout { .. }
                | SshError::Protocol { .. }
        )
    }
}

/// The orchestrator's admin private key (L1), parsed once. `Debug` shows the fingerprint only;
/// the key material is zeroized when the last clone is dropped.
#[derive(Clone)]
pub struct AdminKey {
    key: Arc<PrivateKey>,
    /// The public key line, computed once: it goes into every server's user data.
    public: String,
}

impl AdminKey {
    /// Parses an OpenSSH private key (unencrypted).
    pub fn from_openssh(private: &SecretString) -> Result<Self, SshError> {
        let key = PrivateKey::from_openssh(private.expose_secret()).map_err(|_| SshError::Key)?;
        let mut public = key.public_key().clone();
        public.set_comment("");
        let public = public.to_openssh().map_err(|_| SshError::Key)?;
        Ok(Self {
            key: Arc::new(key),
            public,
        })
    }

    /// The public key line (`ssh-ed25519 AAAA...`), without comment.
    pub fn public_openssh(&self) -> &str {
        &self.public
    }

    /// `SHA256:...`
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AdminKey")
            .field(&self.fingerprint())
            .finish()
    }
}

/// What to accept as the server's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// Exactly this key (an OpenSSH public key line).
    Pinned(String),
    /// Whatever the server presents; it is returned by [`Session::host_key`]. Only for the first
    /// contact right after a reinstall infra itself requested.
    LearnOnFirstUse,
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct Target {
    /// An address or a name.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub host_key: HostKey,
}

impl Target {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How much of each stream [`Session::run`] keeps: a server we do not trust (an app on it may
/// have replaced the shell's tools) must not be able to fill infra's memory by answering.
pub const MAX_OUTPUT: usize = 1 << 20;

/// What a command left behind: at most [`MAX_OUTPUT`] bytes of each stream, the first ones of
/// stdout (what we parse) and the last ones of stderr (where the error is); the rest is read
/// and dropped, so the command still runs to its end.
#[derive(Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit status; `None` if the server sent none (killed by a signal).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes read past [`MAX_OUTPUT`] and dropped, both streams together.
    pub dropped: u64,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

impl fmt::Debug for Output {
    // Output may echo what was sent over stdin; lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("status", &self.status)
            .field("stdout_len", &self.stdout.len())
            .field("stderr_len", &self.stderr.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

/// Appends what fits under `cap`; returns how many bytes were dropped.
fn keep_head(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> u64 {
    let room = cap.saturating_sub(buf.len()).min(data.len());
    buf.extend_from_slice(&data[..room]);
    (data.len() - room) as u64
}

/// Appends `data` and drops the oldest bytes over `cap`; returns how many were dropped.
fn keep_tail(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> u64 {
    let cut = data.len().saturating_sub(cap);
    let data = &data[cut..];
    let over = (buf.len() + data.len()).saturating_sub(cap);
    buf.drain(..over);
    buf.extend_from_slice(data);
    (cut + over) as u64
}

/// Checks the server's host key during the key exchange and remembers what it saw.
struct Checker {
    expected: Option<PublicKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_key else {
            return Ok(false);
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.clone());
        }
        Ok(match &self.expected {
            Some(expected) => expected.key_data() == key.key_data(),
            None => true,
        })
    }
}

/// A logged-in SSH connection.
pub struct Session {
    handle: Handle<Checker>,
    addr: String,
    host_key: String,
    timeout: Duration,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Connects to `target`, checks its host key and logs in with `key`. `timeout` bounds the
/// connection and the login, and later each command.
pub async fn connect(
    target: &Target,
    key: &AdminKey,
    timeout: Duration,
) -> Result<Session, SshError> {
    let addr = target.addr();
    let expected = match &target.host_key {
        HostKey::Pinned(line) => Some(
            PublicKey::from_openssh(line)
                .map_err(|_| SshError::PublicKey(line.chars().take(24).collect()))?,
        ),
        HostKey::LearnOnFirstUse => None,
    };
    let seen = Arc::new(Mutex::new(None));
    let checker = Checker {
        expected: expected.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(timeout.max(Duration::from_secs(30))),
        ..Default::default()
    });
    let login = async {
        let mut handle = client::connect(config, (target.host.as_str(), target.port), checker)
            .await
            .map_err(|e| match e {
                russh::Error::IO(io) => SshError::Unreachable {
                    addr: addr.clone(),
                    reason: io.to_string(),
                },
                russh::Error::UnknownKey => {
                    let seen = seen.lock().ok().and_then(|s| s.clone());
                    SshError::HostKeyMismatch {
                        addr: addr.clone(),
                        expected: expected.as_ref().map(fingerprint).unwrap_or_default(),
                        seen: seen
                            .as_ref()
                            .map(fingerprint)
                            .unwrap_or_else(|| "a certificate".to_owned()),
                    }
                }
                other => SshError::Protocol {
                    addr: addr.clone(),
                    reason: other.to_string(),
                },
            })?;
        let protocol = |e: russh::Error| SshError::Protocol {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(protocol)?
            .flatten();
        let auth = handle
            .authenticate_publickey(
                target.user.clone(),
                PrivateKeyWithHashAlg::new(key.key.clone(), hash),
            )
            .await
            .map_err(protocol)?;
        if !auth.success() {
            return Err(SshError::AuthRefused {
                addr: addr.clone(),
                user: target.user.clone(),
            });
        }
        Ok(handle)
    };
    let handle = tokio::time::timeout(timeout, login)
        .await
        .map_err(|_| SshError::Timeout {
            addr: addr.clone(),
            after: timeout,
        })??;
    let host_key = seen
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .and_then(|mut k| {
            k.set_comment("");
            k.to_openssh().ok()
        })
        .unwrap_or_default();
    Ok(Session {
        handle,
        addr,
        host_key,
        timeout,
    })
}

impl Session {
    /// The host key the server presented (an OpenSSH public key line), to pin from now on.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// Runs `command`, sends `stdin` and closes it, and collects the output until the command
    /// exits (or the session's timeout passes).
    pub async fn run(&self, command: &str, stdin: &[u8]) -> Result<Output, SshError> {
        let protocol = |e: russh::Error| SshError::Protocol {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        let exchange = async {
            let channel = self.handle.channel_open_session().await.map_err(protocol)?;
            channel.exec(true, command).await.map_err(protocol)?;
            // Send stdin while reading the output: a command that writes before it has read
            // all of its stdin (`cat`) would otherwise fill our receive window, stop reading,
            // and both sides would wait for each other until the timeout.
            let (mut reader, writer) = channel.split();
            let send = async {
                if !stdin.is_empty() {
                    writer.data(stdin).await?;
                }
                writer.eof().await
            };
            let receive = async {
                let mut output = Output {
                    status: None,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    dropped: 0,
                };
                while let Some(message) = reader.wait().await {
                    match message {
                        ChannelMsg::Data { data } => {
                            output.dropped += keep_head(&mut output.stdout, &data, MAX_OUTPUT);
                        }
                        ChannelMsg::ExtendedData { data, .. } => {
                            output.dropped += keep_tail(&mut output.stderr, &data, MAX_OUTPUT);
                        }
                        ChannelMsg::ExitStatus { exit_status } => output.status = Some(exit_status),
                        _ => {}
                    }
                }
                output
            };
            let (sent, output) = tokio::join!(send, receive);
            sent.map_err(protocol)?;
            Ok(output)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SshError::Timeout {
                addr: self.addr.clone(),
                after: self.timeout,
            })?
    }

    /// Says goodbye (best effort).
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::{keep_head, keep_tail};

    #[test]
    fn output_keeps_the_head_of_stdout_and_the_tail_of_stderr_within_the_cap() {
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let mut dropped = 0;
        for chunk in [&b"abc"[..], b"defg", b"hijklmnopq"] {
            dropped += keep_head(&mut head, chunk, 5);
            dropped += keep_tail(&mut tail, chunk, 5);
        }
        assert_eq!(
            (head.as_slice(), tail.as_slice()),
            (&b"abcde"[..], &b"mnopq"[..])
        );
        assert_eq!(dropped, 2 * (17 - 5));
    }
}
