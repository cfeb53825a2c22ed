//! The upstream client: one connection pool per upstream origin, on hyper's own connection API.
//!
//! Each route's plan holds the [`Upstream`] of its origin (scheme, host, port and TLS settings),
//! built once per generation. An `Upstream` keeps idle HTTP/1.1 connections for keep-alive and,
//! when the upstream offers `h2` by ALPN, one multiplexed HTTP/2 connection. A connection goes
//! back to the pool when its response body has been read to the end; one that the upstream
//! closed while idle is noticed before use, and a request that could not be written to it is
//! sent again on a fresh connection (hyper hands such a request back unsent).
//!
//! Redirects are never followed and no environment proxy is used: a secret goes only to the
//! origin its route names. TLS is rustls with the ring provider, verifying against the OS trust
//! store (rustls-platform-verifier) plus a route's `ca-file`; sessions are resumed through the
//! client config shared by every route with the same trust settings.
//!
//! A route with a TLS client certificate (mTLS, `client-cert`/`client-key`) gets a client config
//! and a pool of its own: both are keyed by the origin, the trust settings and the certificate's
//! identity (a hash of the chain and key, never printed), so a connection authenticated with one
//! certificate never carries another route's requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::Digest;
use tokio::net::TcpStream;

use crate::configkit::RouteBase as Route;
use crate::http::body::BoxError;

/// The request body type sent upstream.
pub type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// How long an idle connection may wait in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle HTTP/1.1 connections kept per upstream and worker; more are closed when they come back.
const MAX_IDLE: usize = 64;

/// Installs ring as rustls's process-wide crypto provider; must run before any client is built.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An already installed provider (e.g. by an embedding program) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, thiserror::Error)]
#[error("route `{route}`: {message}")]
pub struct ClientError {
    pub route: String,
    pub message: String,
}

/// Why an upstream exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect within {0:?}")]
    ConnectTimeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    /// The exchange failed; when the request body failed first, that is the cause.
    #[error("{0}")]
    Exchange(hyper::Error),
}

impl SendError {
    /// The error and its causes on one line.
    pub fn chain(&self) -> String {
        crate::http::error_chain(self)
    }

    /// Why the upstream refused the TLS handshake over the client's certificate (a missing,
    /// unknown or rejected client certificate), when that is what happened. With TLS 1.3 the
    /// server's alert arrives after the client's side of the handshake, with the first read.
    pub fn tls_refusal(&self) -> Option<&'static str> {
        use rustls::AlertDescription as Alert;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = match self {
            SendError::Tls(error) | SendError::Connect(error) => Some(error),
            SendError::Handshake(error) | SendError::Exchange(error) => Some(error),
            SendError::ConnectTimeout(_) => None,
        };
        while let Some(error) = cause {
            let tls = error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .or_else(|| error.downcast_ref::<rustls::Error>());
            if let Some(rustls::Error::AlertReceived(alert)) = tls {
                return match alert {
                    Alert::CertificateRequired => Some("the upstream requires a client certificate"),
                    Alert::BadCertificate
                    | Alert::UnsupportedCertificate
                    | Alert::CertificateRevoked
                    | Alert::CertificateExpired
                    | Alert::CertificateUnknown
                    | Alert::UnknownCA
                    | Alert::AccessDenied => Some("the upstream rejected the client certificate"),
                    Alert::HandshakeFailure => Some("the upstream refused the TLS handshake"),
                    _ => None,
                };
            }
            cause = error.source();
        }
        None
    }
}

/// A TLS client certificate chain and its private key (mTLS). `Debug` shows neither.
pub struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Identifies the pair for pool keys (never printed).
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({} certificates)", self.certs.len())
    }
}

impl ClientIdentity {
    /// The hash of the chain and key that keys pools (never printed).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Parses a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1). Errors are
    /// fixed text: nothing of either PEM is quoted.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<ClientIdentity, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert).filter_map(Result::ok).collect();
        if certs.is_empty() {
            return Err("client-cert holds no PEM certificate".to_string());
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|_| "client-key holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string())?;
        let mut hash = sha2::Sha256::new();
        for cert in &certs {
            hash.update(cert.as_ref());
        }
        hash.update(key.secret_der());
        Ok(ClientIdentity {
            certs,
            key,
            fingerprint: hash.finalize().into(),
        })
    }
}

/// A client certificate's identity (hash of chain and key).
type Fingerprint = [u8; 32];
/// Origin, extra roots, connect timeout and client certificate: what makes two pools differ.
type UpstreamKey = (String, Option<PathBuf>, Duration, Option<Fingerprint>);

/// The upstreams of one generation, shared by the routes that name the same origin with the
/// same trust settings, and the TLS configs shared by routes with the same trust settings.
#[derive(Default)]
pub struct Upstreams {
    by_key: HashMap<UpstreamKey, Arc<Upstream>>,
    tls: HashMap<(Option<PathBuf>, Option<Fingerprint>), Arc<rustls::ClientConfig>>,
}

impl Upstreams {
    /// The upstream for `route`, built on first use within this generation.
    pub fn for_route(&mut self, route: &Route) -> Result<Arc<Upstream>, ClientError> {
        self.for_origin(&route.upstream.base, route.ca_file.as_deref(), route.connect_timeout)
            .map_err(|message| ClientError {
                route: route.name.clone(),
                message,
            })
    }

    /// The upstream for the origin (scheme, host, port) of `base`.
    pub fn for_origin(
        &mut self,
        base: &url::Url,
        ca_file: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<Arc<Upstream>, String> {
        self.for_origin_with(base, ca_file, connect_timeout, None)
    }

    /// The upstream for the origin of `base`, presenting `identity` when the upstream asks for
    /// a client certificate.
    pub fn for_origin_with(
        &mut self,
        base: &url::Url,
        ca_file: Option<&Path>,
        connect_timeout: Duration,
        identity: Option<&ClientIdentity>,
    ) -> Result<Arc<Upstream>, String> {
        let fingerprint = identity.map(|identity| identity.fingerprint);
        let https = base.scheme() == "https";
        let host = base.host_str().unwrap_or_default().to_string();
        let port = base.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        let ca_file = ca_file.map(Path::to_path_buf);
        let key = (
            format!("{}://{host}:{port}", base.scheme()),
            ca_file.clone(),
            connect_timeout,
            fingerprint,
        );
        if let Some(upstream) = self.by_key.get(&key) {
            return Ok(upstream.clone());
        }
        let tls = if https {
            let config = match self.tls.get(&(ca_file.clone(), fingerprint)) {
                Some(config) => config.clone(),
                None => {
                    let config = Arc::new(tls_config(ca_file.as_deref(), identity)?);
                    self.tls.insert((ca_file.clone(), fingerprint), config.clone());
                    config
                }
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let name = ServerName::try_from(bare).map_err(|_| format!("`{host}` is not a TLS server name"))?;
            Some((config, name))
        } else {
            None
        };
        let default_port = port == if https { 443 } else { 80 };
        let authority_text = if default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let authority = Authority::try_from(authority_text.as_str())
            .map_err(|_| format!("`{authority_text}` is not a valid authority"))?;
        let upstream = Arc::new(Upstream {
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            host_header: HeaderValue::from_str(authority.as_str()).map_err(|_| "bad host".to_string())?,
            authority,
            connect_host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            tls,
            connect_timeout,
            pool: Mutex::new(Pool::default()),
            first_connect: tokio::sync::Mutex::new(()),
            http1_only: std::sync::atomic::AtomicBool::new(!https),
        });
        self.by_key.insert(key, upstream.clone());
        Ok(upstream)
    }
}

fn tls_config(ca_file: Option<&Path>, identity: Option<&ClientIdentity>) -> Result<rustls::ClientConfig, String> {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match ca_file {
        None => Vec::new(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read ca-file `{}`: {e}", path.display()))?;
            let certs: Vec<CertificateDer<'static>> = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            if certs.is_empty() {
                return Err(format!("ca-file `{}` holds no PEM certificate", path.display()));
            }
            certs
        }
    };
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(|e| format!("cannot load the trust store: {e}"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot build the TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        // rustls's error names the problem (an unsupported key type, a key that does not match
        // the certificate), never the key.
        Some(identity) => builder
            .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
            .map_err(|e| format!("cannot use the client certificate: {e}"))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// One upstream origin and its pooled connections.
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    connect_host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
    pool: Mutex<Pool>,
    /// Held while connecting to a TLS upstream that may offer HTTP/2: concurrent requests wait
    /// for that one connection instead of each opening their own.
    first_connect: tokio::sync::Mutex<()>,
    /// Set once the upstream is known to speak HTTP/1.1 only (plain HTTP, or ALPN said so):
    /// connections are then opened in parallel.
    http1_only: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({}://{})", self.scheme, self.authority)
    }
}

#[derive(Default)]
struct Pool {
    /// Idle HTTP/1.1 connections by the worker whose runtime drives them (see [`set_worker`]):
    /// a request takes one of its own worker's, so no wake-up crosses threads.
    idle: Vec<Vec<(http1::SendRequest<UpstreamBody>, Instant)>>,
    h2: Option<http2::SendRequest<UpstreamBody>>,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as serving worker `n` (a single-threaded runtime of its own, see
/// `daemon::server`): upstream connections it opens stay in that worker's part of each pool.
/// Threads never marked share part 0.
pub fn set_worker(n: usize) {
    WORKER.with(|worker| worker.set(n));
}

fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

enum Sender {
    /// With a fresh connection, how its connection task ended (see [`Upstream::cause`]).
    H1(http1::SendRequest<UpstreamBody>, Option<Ended>),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Upstream {
    /// The upstream's host, for logs.
    pub fn host(&self) -> &str {
        self.authority.as_str()
    }

    /// Sends `request` (its URI holds the path and query only) and returns the response head
    /// with a body that returns the connection to the pool when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        path_and_query: PathAndQuery,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        // A pooled connection may have been closed by the upstream while idle; a request that
        // was not written to it goes once more on a fresh connection.
        let mut fresh_only = false;
        loop {
            let (sender, pooled) = match if fresh_only { None } else { self.take_pooled() } {
                Some(sender) => (sender, true),
                // Connecting (TCP, TLS, handshake) is a large future and rare on a warm pool.
                None => Box::pin(self.connect_or_share()).await?,
            };
            match sender {
                Sender::H2(mut sender) => {
                    if let Err(err) = sender.ready().await {
                        if pooled {
                            fresh_only = true;
                            continue;
                        }
                        return Err(SendError::Exchange(err));
                    }
                    *request.uri_mut() = self.absolute(path_and_query);
                    request.headers_mut().remove(http::header::HOST);
                    let response = sender.send_request(request).await.map_err(SendError::Exchange)?;
                    return Ok(response.map(|body| PooledBody {
                        inner: body,
                        back: None,
                    }));
                }
                Sender::H1(mut sender, ended) => {
                    // A connection just handed back may still be finishing its last response.
                    if let Err(err) = sender.ready().await {
                        if pooled {
                            fresh_only = true;
                            continue;
                        }
                        return Err(SendError::Exchange(Self::cause(err, ended).await));
                    }
                    *request.uri_mut() = Uri::from(path_and_query.clone());
                    if !request.headers().contains_key(http::header::HOST) {
                        request
                            .headers_mut()
                            .insert(http::header::HOST, self.host_header.clone());
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let back = Some((self.clone(), sender, worker()));
                            return Ok(response.map(|body| PooledBody { inner: body, back }));
                        }
                        Err(mut failed) => match failed.take_message() {
                            Some(unsent) if pooled => {
                                request = unsent;
                                fresh_only = true;
                            }
                            _ => return Err(SendError::Exchange(Self::cause(failed.into_error(), ended).await)),
                        },
                    }
                }
            }
        }
    }

    fn absolute(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }

    /// A pooled connection that is ready now, if any.
    fn take_pooled(&self) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(h2) = &pool.h2 {
            if !h2.is_closed() {
                return Some(Sender::H2(h2.clone()));
            }
            pool.h2 = None;
        }
        let idle = pool.idle.get_mut(worker())?;
        // Most recently used first: the one least likely to have been closed by the upstream.
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(Sender::H1(sender, None));
            }
        }
        None
    }

    fn give_back(&self, sender: http1::SendRequest<UpstreamBody>, worker: usize) {
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.idle.len() <= worker {
            pool.idle.resize_with(worker + 1, Vec::new);
        }
        let idle = &mut pool.idle[worker];
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    /// A new connection, or (for an upstream that may speak HTTP/2) the multiplexed one another
    /// request has just opened. The flag says whether the sender came from the pool.
    async fn connect_or_share(&self) -> Result<(Sender, bool), SendError> {
        if self.http1_only.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok((self.connect().await?, false));
        }
        let _first = self.first_connect.lock().await;
        if let Some(shared) = self.take_pooled() {
            return Ok((shared, true));
        }
        Ok((self.connect().await?, false))
    }

    /// A TCP connection to the origin within the connect timeout, Nagle off.
    async fn connect_tcp(&self) -> Result<TcpStream, SendError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.connect_host.as_str(), self.port)),
        )
        .await
        .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
        .map_err(SendError::Connect)?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let tcp = self.connect_tcp().await?;
        match &self.tls {
            None => self.handshake_h1(tcp).await,
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
                    .map_err(SendError::Tls)?;
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(TokioIo::new(tls))
                        .await
                        .map_err(SendError::Handshake)?;
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(error = %err, "upstream HTTP/2 connection ended");
                        }
                    });
                    let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    pool.h2 = Some(sender.clone());
                    Ok(Sender::H2(sender))
                } else {
                    self.http1_only.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.handshake_h1(QuietTls(tls)).await
                }
            }
        }
    }

    async fn handshake_h1<T>(&self, io: T) -> Result<Sender, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // One flat write buffer instead of a head/body iovec queue: fewer instructions per
        // request (measured with callgrind), at the cost of copying body chunks once.
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Handshake)?;
        let (report, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended");
                let _ = report.send(err);
            }
        });
        Ok(Sender::H1(sender, Some(ended)))
    }

    /// The error to report when a fresh connection failed its first request: the connection
    /// task's own error when it ended with one. A server's TLS 1.3 alert (a refused client
    /// certificate) can end the connection before the request is even handed to it, and then
    /// the request only learns "channel closed"; the connection's error says why.
    async fn cause(error: hyper::Error, ended: Option<Ended>) -> hyper::Error {
        let Some(ended) = ended else { return error };
        if !(error.is_canceled() || error.is_closed() || error.is_incomplete_message()) {
            return error;
        }
        // The task has ended or is ending (its request channel is closed): bounded anyway.
        match tokio::time::timeout(Duration::from_secs(1), ended).await {
            Ok(Ok(cause)) => cause,
            _ => error,
        }
    }
}

/// How a fresh HTTP/1.1 connection's task ended, when with an error.
type Ended = tokio::sync::oneshot::Receiver<hyper::Error>;

/// A connection that an upgrade takes over (see [`Upstream::connect_upgradable`]).
pub trait UpgradableIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> UpgradableIo for T {}

impl Upstream {
    /// A fresh connection to this origin for a request that upgrades it (WebSocket): TCP, then
    /// TLS with the same trust settings as the pool but only `http/1.1` offered by ALPN (an
    /// upgrade is HTTP/1.1), within the connect timeout. Never pooled: the upgrade keeps it.
    /// Returns the stream and the `Host` header for the handshake.
    pub async fn connect_upgradable(&self) -> Result<(Box<dyn UpgradableIo>, HeaderValue), SendError> {
        let tcp = self.connect_tcp().await?;
        let io: Box<dyn UpgradableIo> = match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                // Rare (once per session): a copy of the shared config with the one ALPN value.
                let mut config = rustls::ClientConfig::clone(config);
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
                    .map_err(SendError::Tls)?;
                Box::new(tls)
            }
        };
        Ok((io, self.host_header.clone()))
    }
}

/// A client TLS stream whose reads skip rustls while it cannot have anything to give.
///
/// hyper polls a pooled connection's read side on every wake-up of its task (about seven times
/// per request, six of them with nothing to read). Through tokio-rustls each such poll runs
/// rustls's record reader only to find the socket empty. Here a read returns `Pending` at once
/// when rustls holds no plaintext (`wants_read`) and the socket has not become readable since a
/// read last found it empty; the socket's readiness registers the waker as a read would.
/// Anything else (data, EOF, an error, a partial record, a close) takes the ordinary path.
struct QuietTls(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio::io::AsyncRead for QuietTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (tcp, session) = this.0.get_mut();
        if session.wants_read() && tcp.poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for QuietTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A response body that hands its HTTP/1.1 connection back to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    /// The pool, the connection, and the worker whose part of the pool it goes back to.
    back: Option<(Arc<Upstream>, http1::SendRequest<UpstreamBody>, usize)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((upstream, sender, worker)) = self.back.take() {
            upstream.give_back(sender, worker);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body never polled but already complete (HEAD, 204, 304, empty) frees its connection.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
