//! A loopback HTTP/1.1 server that answers every request with one scripted answer, for the
//! property tests of the HTTP clients' decoders (feature `testing`).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer the server gives to every request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// How long the server waits before answering.
    pub delay: Duration,
}

/// A loopback HTTP/1.1 server answering every request with the current [`Answer`].
#[derive(Debug)]
pub struct Scripted {
    pub rt: tokio::runtime::Runtime,
    pub base: String,
    answer: Arc<Mutex<Answer>>,
}

impl Scripted {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let answer = Arc::new(Mutex::new(Answer {
            status: 200,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
        }));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = answer.clone();
        rt.spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let answer = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    let _ = respond(&mut sock, &answer).await;
                });
            }
        });
        Self { rt, base, answer }
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Runs a client call; `None` when it did not end within 10 s.
    pub fn call<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), f).await })
            .ok()
    }
}

async fn respond(sock: &mut tokio::net::TcpStream, answer: &Answer) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    tokio::time::sleep(answer.delay).await;
    let mut out = format!(
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    sock.write_all(out.as_bytes()).await?;
    sock.write_all(&answer.body).await?;
    sock.shutdown().await
}
