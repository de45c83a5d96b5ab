//! `stove worker`: lends this machine's devices (its GPUs, or its CPU where it has none) to other stove
//! instances that run a model too big for one machine.
//!
//! ggml's RPC server listens on a loopback port only; in front of it, stove's link listens on `--listen`. A
//! peer reaches ggml's socket only after the link's handshake proved a key from `--allow-key`; anything else
//! (a wrong or missing key, garbage, a half or replayed handshake, a peer that says nothing) is one line on
//! standard error and the worker goes on. ggml's server serves one instance at a time, so a second instance is
//! turned away, told who is served.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ed25519_dalek::VerifyingKey;

use super::link::{self, Accepted, Identity};
use crate::cli::{RunArgs, WorkerArgs};
use crate::llama::rpc as ggml_rpc;

/// Handshakes in progress at once; a connection beyond them is closed at once (one line says so). Each takes a
/// thread for at most the handshake's 10 s, so a flood of silent connections costs little and ends by itself.
const HANDSHAKES: usize = 64;
/// How long a connection from the instance being served waits for that instance's previous one to end: it
/// opens its second connection as it closes its first.
const HANDOVER: Duration = Duration::from_secs(3);

pub fn run(args: &WorkerArgs, run: &RunArgs) -> Result<()> {
    crate::hardware::backends::load(run.gpu).map_err(anyhow::Error::msg)?;
    if !ggml_rpc::available() {
        bail!("worker: {}", ggml_rpc::unavailable());
    }
    let allowed: Vec<VerifyingKey> =
        args.allow_key.iter().map(|path| crate::signing::load_verifying_key(path)).collect::<Result<_>>()?;
    let loopback = args.listen.ip().is_loopback();
    if !loopback && allowed.is_empty() {
        bail!(
            "--listen {}: other machines could use this one's devices and send ggml anything; give --allow-key \
             with the main instance's .pub file (`stove keygen` makes one), or listen on 127.0.0.1 for this machine \
             only",
            args.listen
        );
    }
    if !loopback && run.identity.is_none() {
        bail!(
            "--listen {}: give --identity with this worker's .key file (`stove keygen`), so main instances can check \
             they reach this worker (--worker HOST:PORT@ITS.pub)",
            args.listen
        );
    }
    let (identity, public) = super::identity(run.identity.as_deref())?;
    let devices = ggml_rpc::devices_to_lend();
    if devices.is_empty() {
        bail!("this machine has no device ggml can lend");
    }
    let listener = TcpListener::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut out = quiet_ggml();
    let ggml = start_ggml(args, run, &devices)?;
    let lent: Vec<String> = devices
        .iter()
        .map(|d| {
            let (free, total) =
                (crate::hardware::human_bytes(d.memory_free), crate::hardware::human_bytes(d.memory_total));
            format!("{} ({}, {free} free of {total})", d.name, d.description)
        })
        .collect();
    let mut banner = format!("stove worker: lending {} on {}\n", lent.join(", "), listener.local_addr()?);
    banner += &format!("  key          {}\n", crate::signing::fingerprint(&public));
    banner += &match allowed.len() {
        0 => "  accepts      any key from this machine (loopback)\n".to_string(),
        n => format!("  accepts      {n} key{}\n", if n == 1 { "" } else { "s" }),
    };
    if let Some(dir) = &args.cache {
        banner += &format!("  cache        {} (weights sent once are kept here)\n", dir.display());
    }
    // Whoever started the worker may stop reading its output (a script that waits for the first line): the
    // worker goes on serving regardless.
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();
    let shared = Arc::new(Shared {
        identity,
        allowed,
        ggml,
        serving: Mutex::new(None),
        freed: Condvar::new(),
        handshakes: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
        if shared.handshakes.fetch_add(1, Ordering::SeqCst) >= HANDSHAKES {
            shared.handshakes.fetch_sub(1, Ordering::SeqCst);
            eprintln!("worker: {peer} dropped: {HANDSHAKES} handshakes are already in progress");
            continue;
        }
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || serve(stream, &peer, &shared));
    }
    Ok(())
}

/// What the connections share.
struct Shared {
    identity: Identity,
    allowed: Vec<VerifyingKey>,
    /// ggml's RPC server, on loopback.
    ggml: SocketAddr,
    /// Who is served now (its key's fingerprint), while someone is; `freed` says when no one is.
    serving: Mutex<Option<String>>,
    freed: Condvar,
    handshakes: AtomicUsize,
}

fn serve(stream: TcpStream, peer: &str, shared: &Shared) {
    super::keep_alive(&stream);
    let allowed = if shared.allowed.is_empty() { Accepted::Any } else { Accepted::Keys(&shared.allowed) };
    let accepted = link::accept(stream, &shared.identity, allowed, &super::versions());
    shared.handshakes.fetch_sub(1, Ordering::SeqCst);
    let mut link = match accepted {
        Ok(link) => link,
        Err(e) => {
            eprintln!("worker: refused {peer}: {e}");
            return;
        }
    };
    let who = link.peer_key(&shared.allowed);
    // ggml's server takes one instance at a time; the same instance's next connection comes right after its last.
    let serving = shared.serving.lock().expect("serving");
    let (mut serving, _) = shared
        .freed
        .wait_timeout_while(serving, HANDOVER, |serving| serving.as_ref().is_some_and(|other| *other == who))
        .expect("serving");
    if let Some(other) = serving.clone() {
        drop(serving);
        eprintln!("worker: turned {peer} away: serving {other}");
        let _ = link.turn_away(&format!("this worker serves another stove instance (key {other})"));
        return;
    }
    *serving = Some(who.clone());
    drop(serving);
    let result = TcpStream::connect(shared.ggml).map_err(|e| e.to_string()).and_then(|ggml| {
        link.admit().map_err(|e| e.to_string())?;
        eprintln!("worker: serving {peer} (key {who}, stove {})", link.peer.stove);
        link.pump(ggml).map_err(|e| e.to_string())
    });
    *shared.serving.lock().expect("serving") = None;
    shared.freed.notify_all();
    match result {
        Ok(()) => eprintln!("worker: {peer} left"),
        Err(e) => eprintln!("worker: {peer} left: {e}"),
    }
}

/// ggml's RPC server prints a banner and a line per connection on standard output (`printf`), naming its loopback
/// port as the endpoint, which is not the address main instances are to use; stove says the same things better
/// (its banner, and a line per connection on standard error). So standard output goes to the null device from
/// here on, and stove's banner to the real one, through a copy of it made first. ggml's errors, on standard
/// error, still show. The C runtime's descriptors are used on every system: on Windows, ggml's DLL prints
/// through the same C runtime (msvcrt), whose `_dup2` onto descriptor 1 also sets the process's standard handle.
fn quiet_ggml() -> Box<dyn Write> {
    let null_device = if cfg!(windows) { c"NUL" } else { c"/dev/null" };
    // SAFETY: plain descriptor calls on the C runtime's table: a copy of descriptor 1, owned from here on by the
    // returned writer, and descriptor 1 replaced by the null device, whose own descriptor is then closed.
    unsafe {
        let copy = libc::dup(1);
        let null = libc::open(null_device.as_ptr(), libc::O_WRONLY);
        let quieted = copy >= 0 && null >= 0 && libc::dup2(null, 1) >= 0;
        if null >= 0 {
            libc::close(null);
        }
        if quieted {
            return Box::new(Descriptor(copy));
        }
        if copy >= 0 {
            libc::close(copy);
        }
    }
    Box::new(std::io::stdout())
}

/// Writes to a C runtime descriptor this process owns.
struct Descriptor(libc::c_int);

impl Write for Descriptor {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // The C runtime's count is 32 bits on Windows; a banner is far shorter.
        let len = bytes.len().min(1 << 20);
        // SAFETY: the descriptor is open (owned by this value) and the buffer holds `len` bytes.
        let written = unsafe { libc::write(self.0, bytes.as_ptr().cast(), len as _) };
        if written < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(written as usize)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: closed once, by its owner.
        unsafe { libc::close(self.0) };
    }
}

/// Starts ggml's RPC server on a free loopback port, in a thread of its own, and waits until it accepts.
fn start_ggml(args: &WorkerArgs, run: &RunArgs, devices: &[ggml_rpc::LocalDevice]) -> Result<SocketAddr> {
    // A free port: taken and let go; ggml binds it a moment later.
    let address = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    if let Some(dir) = &args.cache {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create --cache {}", dir.display()))?;
    }
    let (endpoint, cache, devices) = (address.to_string(), args.cache.clone(), devices.to_vec());
    let threads = run.threads.unwrap_or_else(crate::hardware::default_threads);
    let (failed, failure) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("ggml-rpc-server".into()).spawn(move || {
        let result = ggml_rpc::serve(&endpoint, cache.as_deref(), threads, &devices);
        let _ = failed.send(result);
    })?;
    // ggml's server is ready when its port accepts; a connection that sends nothing is simply dropped by it.
    let started = std::time::Instant::now();
    loop {
        if let Ok(Err(why)) = failure.try_recv() {
            bail!("ggml's RPC server did not start on {address}: {why}");
        }
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(address);
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("ggml's RPC server did not start on {address} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
