//! The main instance's side (`--worker HOST:PORT[@KEY.pub]`): each worker becomes one more set of devices
//! llama.cpp places layers on. ggml's RPC client talks to a loopback endpoint here; behind it, stove carries
//! each request over the worker's link and each answer back, and watches for the worker's loss.
//!
//! - Every worker is dialled, and its key and versions checked, before the model loads and before the sandbox
//!   (which allows no new connection): one that cannot be reached is one line naming it, and the start ends
//!   unless `--worker-optional`.
//! - ggml reaches a worker through `127.0.0.1:PORT`, a listener here that only this process's own sockets may
//!   use (checked against its open sockets on Linux), so no other local program can ride the link.
//! - A worker that dies, or whose link breaks, is *lost*: the requests ggml already sent and every later one
//!   are answered here with stand-in answers (`protocol.rs`) so that ggml's client, which would otherwise
//!   abort the process, goes on; the engine sees [`lost`] after its step, ends the answers in flight with an
//!   error and stops serving (503) until a restart.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::link::{self, Accepted, Identity, Link};
use super::protocol::{self, Request};
use crate::llama::rpc as ggml_rpc;

/// How long dialling a worker may take before it counts as unreachable.
const DIAL_TIME: Duration = Duration::from_secs(5);

/// `--worker HOST:PORT[@KEY.pub]` as given.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub address: String,
    /// The worker's public key (`stove keygen`'s .pub file); required unless the worker is on loopback.
    pub key: Option<PathBuf>,
}

impl std::str::FromStr for WorkerSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, key) = match text.rsplit_once('@') {
            Some((address, key)) => (address, Some(PathBuf::from(key))),
            None => (text, None),
        };
        if address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(format!(
                "{text}: expected HOST:PORT or HOST:PORT@WORKER.pub (like 192.168.1.20:50052@pc2.pub)"
            ));
        }
        Ok(WorkerSpec { address: address.to_string(), key })
    }
}

/// One worker, as the main instance sees it.
#[derive(Debug)]
pub struct Remote {
    /// As given (`HOST:PORT`).
    pub address: String,
    /// The loopback endpoint ggml's client uses for it.
    pub endpoint: String,
    /// ggml's names for its devices (`RPC0`, …), once ggml has added them.
    pub devices: OnceLock<Vec<String>>,
    /// The worker's stove version, as it said in the handshake.
    pub stove: String,
    /// Why it is lost, once it is.
    lost: Mutex<Option<String>>,
    /// Bytes carried to and from it (ggml's, before encryption).
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// What `/stove/info`, `/health` and `/metrics` say about a worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub address: String,
    pub devices: Vec<String>,
    pub stove: String,
    /// `connected` or `lost`.
    pub state: &'static str,
    pub error: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

static WORKERS: OnceLock<Vec<Arc<Remote>>> = OnceLock::new();

/// The workers in use, in `--worker` order.
pub fn workers() -> &'static [Arc<Remote>] {
    WORKERS.get().map_or(&[], Vec::as_slice)
}

/// Why the model cannot be used any more, when a worker holding part of it is lost.
pub fn lost() -> Option<String> {
    workers().iter().find_map(|w| w.lost.lock().expect("worker state").clone())
}

pub fn status() -> Vec<WorkerStatus> {
    workers()
        .iter()
        .map(|w| {
            let error = w.lost.lock().expect("worker state").clone();
            WorkerStatus {
                address: w.address.clone(),
                devices: w.devices.get().cloned().unwrap_or_default(),
                stove: w.stove.clone(),
                state: if error.is_some() { "lost" } else { "connected" },
                error,
                bytes_sent: w.sent.load(Ordering::Relaxed),
                bytes_received: w.received.load(Ordering::Relaxed),
            }
        })
        .collect()
}

/// Dials every worker, checks it, and adds its devices to llama.cpp's. Call after the backends are loaded and
/// before the sandbox. `identity` is this instance's key (`--identity`), `None` for a key made for this run
/// (which only a worker accepting any key, on loopback, takes). With `optional`, a worker that cannot be used
/// is one line and the start goes on without it.
pub fn connect_all(specs: &[WorkerSpec], identity: Option<&std::path::Path>, optional: bool) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    if !ggml_rpc::available() {
        bail!("--worker: {}", ggml_rpc::unavailable());
    }
    let identity = Arc::new(super::identity(identity)?.0);
    let mut remotes = Vec::new();
    for spec in specs {
        match connect(spec, &identity) {
            Ok(remote) => {
                eprintln!(
                    "worker {}: joined (stove {}), lending {}",
                    remote.address,
                    remote.stove,
                    remote.devices.get().map(|d| d.join(", ")).unwrap_or_default()
                );
                remotes.push(remote);
            }
            Err(e) if optional => eprintln!("worker {}: not used (--worker-optional): {e:#}", spec.address),
            Err(e) => bail!(
                "worker {}: {e:#}. The model needs every --worker: start it, fix the address or key, or add \
                 --worker-optional to go on without it",
                spec.address
            ),
        }
    }
    let _ = WORKERS.set(remotes);
    Ok(())
}

fn connect(spec: &WorkerSpec, identity: &Arc<Identity>) -> Result<Arc<Remote>> {
    let address = resolve(&spec.address)?;
    let expected = match &spec.key {
        Some(path) => Some(crate::signing::load_verifying_key(path)?),
        None if address.ip().is_loopback() => None,
        None => bail!(
            "name the worker's public key (--worker {}@WORKER.pub, from `stove keygen` on that machine): without \
             it anyone on the network could pose as the worker",
            spec.address
        ),
    };
    let first = dial(address, identity, expected.as_ref())?;
    let stove = first.peer.stove.clone();
    // ggml's client reaches the worker through this listener; each connection it opens gets a link of its own.
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot open a loopback port for ggml")?;
    let endpoint = listener.local_addr()?.to_string();
    let remote = Arc::new(Remote {
        address: spec.address.clone(),
        endpoint: endpoint.clone(),
        devices: OnceLock::new(),
        stove,
        lost: Mutex::new(None),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let carrying = Arc::clone(&remote);
    let identity = Arc::clone(identity);
    std::thread::Builder::new().name("stove-worker-link".into()).spawn(move || {
        let mut first = Some(first);
        for ggml in listener.incoming() {
            let Ok(ggml) = ggml else { continue };
            if !from_this_process(&ggml) {
                let from = ggml.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
                eprintln!("worker {}: refused a connection from {from}, not this process's", carrying.address);
                continue;
            }
            let link = match first.take() {
                Some(link) => Ok(link),
                None => dial(address, &identity, expected.as_ref()).map_err(|e| format!("{e:#}")),
            };
            // Each connection in a thread of its own: ggml opens the next as it closes the last, and one
            // that never closed must not hold up the next.
            let carrying = Arc::clone(&carrying);
            std::thread::spawn(move || carry(ggml, link, &carrying));
        }
    })?;
    let devices = ggml_rpc::add_server(&endpoint);
    // A worker lost while ggml asked it about its devices got stand-in answers (no devices): say why.
    if let Some(why) = remote.lost.lock().expect("worker state").clone() {
        bail!("{why}");
    }
    let devices = devices.map_err(anyhow::Error::msg)?;
    let _ = remote.devices.set(devices);
    Ok(remote)
}

fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

fn dial(address: SocketAddr, identity: &Identity, expected: Option<&VerifyingKey>) -> Result<Link> {
    let stream =
        TcpStream::connect_timeout(&address, DIAL_TIME).with_context(|| format!("cannot connect to {address}"))?;
    super::keep_alive(&stream);
    let expected = match expected {
        Some(key) => Accepted::Keys(std::slice::from_ref(key)),
        None => Accepted::Any,
    };
    Ok(link::connect(stream, identity, expected, &super::versions())?)
}

/// What is in flight between ggml and the worker, shared by the two directions of one connection.
struct Flight {
    /// ggml's request that awaits its answer, and how many bytes of the answer ggml already has.
    awaiting: Option<(Request, u64)>,
    /// The worker is gone: ggml's requests are answered here.
    lost: bool,
    /// ggml closed this connection: the link's end that follows is no loss.
    done: bool,
    /// ggml's end, for answers.
    to_ggml: TcpStream,
}

impl Flight {
    /// The worker is gone: ggml gets the rest of the answer it waits for (if any) from the stand-in.
    fn lose(&mut self, remote: &Remote, why: String) {
        if self.lost || self.done {
            return;
        }
        self.lost = true;
        remote.lost.lock().expect("worker state").get_or_insert(why);
        if let Some((request, had)) = self.awaiting.take() {
            if let Ok(Some(answer)) = request.stand_in(ggml_rpc::PROTOCOL) {
                let _ = self.to_ggml.write_all(&answer[usize::try_from(had).unwrap_or(0).min(answer.len())..]);
            }
        }
    }
}

/// Carries one ggml connection over `link` until ggml closes it; a lost worker is answered for (see the
/// module's doc).
fn carry(ggml: TcpStream, link: std::result::Result<Link, String>, remote: &Arc<Remote>) {
    let _ = ggml.set_nodelay(true);
    let (Ok(to_ggml), Ok(mut from_ggml)) = (ggml.try_clone(), ggml.try_clone()) else { return };
    let flight = Arc::new(Mutex::new(Flight { awaiting: None, lost: false, done: false, to_ggml }));
    let mut sender = match link.and_then(|l| l.split().map_err(|e| e.to_string())) {
        Ok((sender, receiver)) => {
            let (flight, remote) = (Arc::clone(&flight), Arc::clone(remote));
            std::thread::spawn(move || answers(receiver, &flight, &remote));
            Some(sender)
        }
        Err(why) => {
            flight
                .lock()
                .expect("flight")
                .lose(remote, format!("worker {} cannot be reached again: {why}", remote.address));
            None
        }
    };
    loop {
        let mut failed = None;
        let read = protocol::forward_request(&mut from_ggml, |bytes| {
            if let (Some(link), None) = (sender.as_mut(), &failed) {
                remote.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if let Err(e) = link.write(bytes) {
                    failed = Some(e);
                }
            }
            Ok(())
        });
        let request = match read {
            Ok(Some(request)) => request,
            // ggml closed its connection (its last user of this worker is gone), or broke it.
            _ => break,
        };
        let mut state = flight.lock().expect("flight");
        let answer_size = match request.answer_size() {
            Ok(size) => size,
            Err(e) => {
                state.lose(remote, format!("worker {}: {e}", remote.address));
                break;
            }
        };
        if !state.lost {
            if answer_size.is_some() {
                state.awaiting = Some((request, 0));
            }
            let sent = match (failed, sender.as_mut()) {
                (None, Some(link)) => link.flush(),
                (Some(e), _) => Err(e),
                (None, None) => Err(io::Error::other("no link")),
            };
            if let Err(e) = sent {
                state.lose(remote, format!("worker {} stopped answering: {e}", remote.address));
            }
            continue;
        }
        if let Ok(Some(answer)) = request.stand_in(ggml_rpc::PROTOCOL) {
            if state.to_ggml.write_all(&answer).is_err() {
                break;
            }
        }
    }
    flight.lock().expect("flight").done = true;
    if let Some(link) = sender {
        link.close();
    }
}

/// The worker's answers, handed to ggml as they come; the end of the link or anything that is not the answer
/// ggml waits for loses the worker.
fn answers(mut receiver: link::Receiver, flight: &Mutex<Flight>, remote: &Remote) {
    let why = loop {
        let bytes = match receiver.recv() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break format!("worker {} closed the link", remote.address),
            Err(e) => break format!("worker {} stopped answering: {e}", remote.address),
        };
        remote.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut state = flight.lock().expect("flight");
        let Some((request, had)) = state.awaiting.as_mut() else {
            break format!("worker {} sent an answer nobody asked for", remote.address);
        };
        let total = 8 + request.answer_size().ok().flatten().unwrap_or(0);
        if *had + bytes.len() as u64 > total {
            break format!("worker {} sent a longer answer than asked for", remote.address);
        }
        *had += bytes.len() as u64;
        let done = *had == total;
        if state.to_ggml.write_all(bytes).is_err() {
            // ggml closed its end: nothing waits for answers any more.
            return;
        }
        if done {
            state.awaiting = None;
        }
    };
    receiver.close();
    flight.lock().expect("flight").lose(remote, why);
}

/// Whether `stream`, accepted on a loopback listener, was opened by this process: its far end must be one of
/// this process's own sockets. (Elsewhere than Linux there is no cheap way to tell; the listener takes only
/// the connections ggml is about to open, at start.)
fn from_this_process(stream: &TcpStream) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(peer) = stream.peer_addr() else { return false };
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return false };
        let own = stream.as_raw_fd();
        fds.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&fd| fd != own)
            .any(|fd| local_address(fd) == Some(peer))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        true
    }
}

#[cfg(target_os = "linux")]
fn local_address(fd: i32) -> Option<SocketAddr> {
    use std::os::fd::BorrowedFd;
    // SAFETY: the descriptor is open for the duration of this call (listed in /proc/self/fd a moment ago; at
    // worst it was closed and the call fails); it is only borrowed to ask its address.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_specs_name_an_address_and_maybe_a_key() {
        let spec: WorkerSpec = "pc2:50052@keys/pc2.pub".parse().unwrap();
        assert_eq!((spec.address.as_str(), spec.key), ("pc2:50052", Some(PathBuf::from("keys/pc2.pub"))));
        let spec: WorkerSpec = "[::1]:50052".parse().unwrap();
        assert_eq!((spec.address.as_str(), spec.key), ("[::1]:50052", None));
        for wrong in ["pc2", ":50052", "pc2:port", "pc2:70000@pc2.pub"] {
            let error = wrong.parse::<WorkerSpec>().unwrap_err();
            assert!(error.contains("expected HOST:PORT"), "{wrong}: {error}");
        }
    }
}
