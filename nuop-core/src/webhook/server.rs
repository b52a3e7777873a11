//! The webhook HTTPS server: rustls over TCP, axum routes `POST /validate/{controller}`,
//! `/mutate/{controller}` and `/convert/{controller}`.
//!
//! Does I/O. TLS handshakes run in tasks of their own, each bounded by
//! [`HANDSHAKE_TIMEOUT`], and feed finished connections to axum: a client that stalls
//! its handshake never holds up the others (test
//! `server::tests::a_stalled_handshake_does_not_block_others`). The certificate comes from the
//! `rustls::ServerConfig` given, whose resolver may swap certificates without a restart.
//! A script problem is always answered as a review (allowed or denied per the hook);
//! only a body that is not a review at all gets HTTP 400, and an unknown controller 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info};

use super::{Registry, review};
use crate::protocol::Phase;
use crate::shutdown::Shutdown;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest review body accepted: an object and its old version, each up to etcd's
/// 1.5 MiB, with room to spare.
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Connections whose handshake finished, waiting for axum to take them.
struct Handshaken {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Handshaken {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts TCP connections and hands each to a handshake task of its own.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.clone() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a moment rather than spin.
                debug!("webhook accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, connections) = (acceptor.clone(), connections.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, "webhook TLS handshake failed: {e}"),
                Err(_) => debug!(%peer, "webhook TLS handshake timed out"),
            }
        });
    }
}

/// The routes, over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/validate/{controller}", post(validate))
        .route("/mutate/{controller}", post(mutate))
        .route("/convert/{controller}", post(convert))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(registry)
}

async fn validate(
    State(registry): State<Arc<Registry>>,
    Path(controller): Path<String>,
    body: Bytes,
) -> Response {
    answer(&registry, &controller, Phase::Validate, &body).await
}

async fn mutate(
    State(registry): State<Arc<Registry>>,
    Path(controller): Path<String>,
    body: Bytes,
) -> Response {
    answer(&registry, &controller, Phase::Mutate, &body).await
}

async fn convert(
    State(registry): State<Arc<Registry>>,
    Path(controller): Path<String>,
    body: Bytes,
) -> Response {
    answer(&registry, &controller, Phase::Convert, &body).await
}

async fn answer(registry: &Registry, controller: &str, phase: Phase, body: &[u8]) -> Response {
    let Some(served) = registry.get(controller) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no script named {controller} serves webhooks here\n"),
        )
            .into_response();
    };
    let answered = match phase {
        Phase::Convert => review::convert(&served, body).await,
        _ => review::admit(&served, phase, body).await,
    };
    match answered {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(bad) => (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response(),
    }
}

/// Binds `address` and serves the webhook routes over TLS until `shutdown`; returns the
/// bound address (port 0 picks a free one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    address: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let tcp = TcpListener::bind(address).await?;
    let local = tcp.local_addr()?;
    let (sender, connections) = mpsc::channel(64);
    tokio::spawn(accept_loop(
        tcp,
        TlsAcceptor::from(tls),
        sender,
        shutdown.clone(),
    ));
    let listener = Handshaken { connections, local };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(registry))
            .with_graceful_shutdown(shutdown)
            .await
        {
            error!("webhook server on {local} failed: {e}");
        }
    });
    info!(address = %local, "serving webhooks");
    Ok(local)
}

/// A rustls server config for one certificate chain and key in PEM (ALPN http/1.1),
/// as read from a mounted directory (`tls.crt`, `tls.key`).
///
/// # Errors
/// When the PEM text holds no certificate or no usable key.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.crt/tls.key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads `tls.crt` and `tls.key` from `dir` (a mounted Secret, as cert-manager
/// provides) into a server config.
///
/// # Errors
/// When a file cannot be read or does not hold a certificate / key.
pub fn server_config_from_dir(dir: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    server_config_from_pem(&read("tls.crt")?, &read("tls.key")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let err = server_config_from_pem(b"", b"").expect_err("empty");
        assert!(err.contains("no certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_stalled_handshake_does_not_block_others() {
        // Half a handshake from one client must not keep a second one from its answer.
        crate::install_crypto_provider();
        let (cert, key) = test_certificate();
        let tls = server_config_from_pem(&cert, &key).expect("config");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = crate::shutdown::shutdown_signal(async move {
            let _ = stopped.await;
        });
        let address = serve(
            "127.0.0.1:0".parse().expect("addr"),
            tls,
            Registry::new(),
            shutdown,
        )
        .await
        .expect("serve");
        // A client that connects and says nothing.
        let _stalled = TcpStream::connect(address).await.expect("connect");
        // A second client completes a handshake and gets a 404 for an unknown controller.
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&cert) {
            roots.add(c.expect("cert")).expect("root");
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(address).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .expect("the handshake is not held up by the stalled client")
            .expect("handshake");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"POST /validate/none HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            .await
            .expect("write");
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        let _ = stop.send(());
    }

    /// The self-signed test certificate for `localhost` (tests/webhook-tls), PEM.
    fn test_certificate() -> (Vec<u8>, Vec<u8>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook-tls");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        (read("tls.crt"), read("tls.key"))
    }
}
