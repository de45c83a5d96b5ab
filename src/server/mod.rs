//! The HTTP server: binds (moving to the next port when one is taken), routes each request, and shuts
//! down cleanly on Ctrl-C or SIGTERM.
//!
//! A request first passes the [`guard::Guard`] (Host, Origin, API key), then goes through [`route`] top to
//! bottom: the API routes under `/v1` (OpenAI's chat, completions, responses and embeddings, Anthropic's messages),
//! health, metrics, stove's own info route, and otherwise the chat page's files (from memory: no route reads
//! the disk).

mod anthropic;
mod api;
mod assets;
mod body;
mod completions;
mod connections;
mod conversation;
mod embeddings;
mod error;
mod guard;
mod pictures;
mod reply;
mod request;
mod responses;
mod sounds;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::engine::{Engine, SamplingParams};
use crate::sandbox::Confinement;
use api::HttpCounters;
pub use assets::Assets;
use body::Body;
use connections::Connections;
use error::{method_not_allowed, not_found};
pub use guard::Guard;

/// How many ports after the requested one are tried when it is taken.
const PORT_TRIES: u16 = 20;
/// How long open connections (streams) get to finish after Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long a client may take to send a request's headers, and how long an idle connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers); hyper answers 431 past it.
const MAX_HEAD: usize = 64 << 10;

/// What every request handler can reach.
pub struct AppState {
    pub engine: Engine,
    pub assets: Assets,
    pub sampling: SamplingParams,
    pub guard: Guard,
    pub http: HttpCounters,
    /// The open connections (`connections.rs`).
    pub connections: Arc<Connections>,
    pub started: std::time::Instant,
    /// What confines this process (`sandbox.rs`), for `/stove/info`.
    pub sandbox: Confinement,
}

impl AppState {
    pub fn new(engine: Engine, assets: Assets, sampling: SamplingParams, guard: Guard, sandbox: Confinement) -> Self {
        AppState {
            engine,
            assets,
            sampling,
            guard,
            http: HttpCounters::default(),
            connections: Arc::new(Connections::default()),
            started: std::time::Instant::now(),
            sandbox,
        }
    }
}

/// Binds `host:port`, or the next free port after it. Synchronous, so the socket exists before the sandbox
/// and before any runtime thread.
pub fn bind(host: IpAddr, port: u16) -> Result<std::net::TcpListener> {
    let listen = |port: u16| -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind((host, port))?;
        // tokio takes it over later and needs it non-blocking.
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    if port == 0 {
        return listen(0).with_context(|| format!("while listening on {host}"));
    }
    let mut last_error = None;
    for candidate in port..=port.saturating_add(PORT_TRIES) {
        match listen(candidate) {
            Ok(listener) => {
                if candidate != port {
                    eprintln!("port {port} is in use; using {candidate} instead");
                }
                return Ok(listener);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e).with_context(|| format!("while listening on {host}:{candidate}")),
        }
    }
    bail!(
        "ports {port} to {} on {host} are all in use ({}); choose another with --port",
        port.saturating_add(PORT_TRIES),
        last_error.map(|e| e.to_string()).unwrap_or_default()
    )
}

/// The address to show people: loopback when listening on all interfaces.
pub fn display_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/", addr.port())
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let connections = Arc::clone(&state.connections);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(e) => { eprintln!("cannot accept a connection: {e}"); continue; }
            },
            _ = &mut shutdown => break,
        };
        // Full of connections that are all busy with requests: this one is closed at once.
        let Some(ticket) = connections.admit(peer.ip()) else { continue };
        let state = Arc::clone(&state);
        let peer = peer.ip();
        let service = service_fn(move |request| route(Arc::clone(&state), peer, request));
        let stream = connections::Marked::new(stream, Arc::clone(&ticket.spoke));
        let connection = http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_header_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = connections::must_close(&ticket) => {}
            }
            drop(ticket);
        });
    }
    drop(listener);
    eprintln!("stopping");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        eprintln!("closed {} s after the stop signal with streams still open", SHUTDOWN_GRACE.as_secs());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs `work` on the engine away from the threads that serve sockets: rendering a long conversation's template
/// and tokenizing it take a while.
async fn off_socket_threads<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(Engine) -> Result<T, crate::engine::EngineError> + Send + 'static,
) -> Result<T, error::ApiError> {
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || work(engine))
        .await
        .map_err(|e| crate::engine::EngineError::Inference(format!("the request could not be prepared: {e}")))?
        .map_err(error::ApiError::from)
}

async fn route(state: Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let response = match state.guard.check(peer, request.method(), request.uri(), request.headers()) {
        // Anthropic's clients read errors in their own shape, refusals included.
        Err(refused) if path.starts_with("/v1/messages") => anthropic::reshape_refusal(*refused),
        Err(refused) => *refused,
        Ok(pass) => {
            let response = match (request.method(), path.as_str()) {
                (&Method::GET, "/health") => api::health(&state),
                (&Method::GET, "/metrics") => api::metrics(&state),
                (&Method::GET, "/v1/models") => api::models(&state),
                (&Method::GET, "/stove/info") => api::info(&state),
                (&Method::POST, "/v1/chat/completions") => completions::chat_completions(&state, request).await,
                (&Method::POST, "/v1/completions") => completions::completions(&state, request).await,
                (&Method::POST, "/v1/embeddings") => embeddings::embeddings(&state, request).await,
                (&Method::POST, "/v1/messages") => anthropic::messages(&state, request).await,
                (&Method::POST, "/v1/messages/count_tokens") => anthropic::count_tokens(&state, request).await,
                (&Method::POST, "/v1/responses") => responses::responses(&state, request).await,
                (&Method::POST, "/apply-template") => completions::apply_template(&state, request).await,
                (&Method::POST, "/tokenize") => completions::tokenize(&state, request).await,
                (
                    _,
                    "/v1/chat/completions"
                    | "/v1/completions"
                    | "/v1/embeddings"
                    | "/v1/messages"
                    | "/v1/messages/count_tokens"
                    | "/v1/responses",
                ) => method_not_allowed("POST"),
                (_, p) if p.starts_with("/v1/") => not_found(p),
                (&Method::GET | &Method::HEAD, p) => state.assets.respond(p, request.headers()),
                _ => method_not_allowed("GET"),
            };
            state.guard.with_cors(response, &pass)
        }
    };
    state.http.record(response.status());
    Ok(response)
}
