//! Low-level clients for tests: any gRPC method as raw bytes, a bare TLS handshake, and a
//! minimal HTTP/1.0 client (admin endpoints, emulators).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
pub use bytes_codec::RawCodec;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Calls `path` (`/pkg.Service/Method`) with an empty message as a bidirectional stream, which
/// works for every RPC kind. Returns the status the call ended with (`Ok` for a first message).
pub async fn call(channel: Channel, path: &str) -> Code {
    match call_result(channel, path).await {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

pub async fn call_result(channel: Channel, path: &str) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let request = tonic::Request::new(futures::stream::iter([Vec::new()]));
    let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
    stream.message().await.map(|_| ())
}

/// The code of a health check over a connection made with exactly `config` (UNAVAILABLE when
/// none can be made): what a client presenting that certificate gets.
pub async fn health_check_with(config: Arc<ClientConfig>, addr: SocketAddr) -> Code {
    match crate::channel_with(config, addr).await {
        Ok(channel) => call(channel, "/grpc.health.v1.Health/Check").await,
        Err(_) => Code::Unavailable,
    }
}

/// Completes a TLS handshake with `config` and returns the server's leaf certificate.
pub async fn server_certificate(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .context("no server certificate")?;
    Ok(certs[0].clone().into_owned())
}

/// A minimal HTTP/1.0 request to `addr` (`host:port`), with a bearer token if given:
/// (status code, body).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}User-Agent: test\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((code, body.to_owned()))
}

/// `GET path` (an admin endpoint): (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http(&addr.to_string(), "GET", path, None, "").await
}

/// The status code of `method path` at an emulator (its `http://` base URL) with `token`.
/// Panics on a transport error.
pub async fn status_with_token(
    base_url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> u16 {
    let addr = base_url.trim_start_matches("http://");
    http(addr, method, path, Some(token), body)
        .await
        .unwrap_or_else(|e| panic!("{method} {base_url}{path}: {e:#}"))
        .0
}

mod bytes_codec {
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    /// Sends and receives message bodies as plain bytes.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct RawCodec;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawCodec;
        type Decoder = RawCodec;

        fn encoder(&mut self) -> Self::Encoder {
            RawCodec
        }

        fn decoder(&mut self) -> Self::Decoder {
            RawCodec
        }
    }

    impl Encoder for RawCodec {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }

    impl Decoder for RawCodec {
        type Item = Vec<u8>;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let mut out = vec![0; bytes::Buf::remaining(src)];
            bytes::Buf::copy_to_slice(src, &mut out);
            Ok(Some(out))
        }
    }
}
