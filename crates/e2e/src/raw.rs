//! Low-level clients for tests: any gRPC method as raw bytes, a bare TLS handshake, and a
//! minimal HTTP/1.0 GET.

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

/// `GET path` over plain HTTP/1.0: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
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
