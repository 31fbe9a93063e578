//! TLS to `https` services: the handshake over a fresh upstream connection, with the client
//! configuration the service was compiled with (`tls::client`) and the server name Kong sends (the
//! upstream host, or the client's `Host` kept by `preserve_host`).

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// Opens TLS over `stream`, naming `server_name`.
pub async fn connect(
    stream: TcpStream,
    server_name: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config.clone()).connect(name, stream).await
}
