//! One model over several machines (issue 17): other stove instances lend their devices through ggml's RPC
//! backend, and stove carries that protocol between machines inside its own authenticated, encrypted link.
//!
//! - `link.rs`: the link (Noise XX keyed with `stove keygen`'s keys).
//! - `protocol.rs`: what stove knows of ggml's RPC framing, to answer for a lost worker.
//! - `worker.rs`: `stove worker`, which lends this machine's devices: ggml's RPC server on loopback, the link
//!   in front of it.
//! - `remote.rs`: `--worker`, the main instance's side: a loopback endpoint for ggml's RPC client per worker,
//!   the link behind it, and the worker's loss noticed and survived.
//!
//! The calls into ggml's RPC module are in `llama/rpc.rs`.

pub mod link;
pub mod protocol;
pub mod remote;
pub mod worker;

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

/// This side's versions, as the link's handshake tells them.
fn versions() -> link::Versions {
    link::Versions { stove: env!("CARGO_PKG_VERSION").to_string(), rpc: crate::llama::rpc::PROTOCOL.to_string() }
}

/// This instance's key on the link, and its public half: `--identity` (a `stove keygen` .key file), or one made
/// for this run.
fn identity(path: Option<&Path>) -> Result<(link::Identity, ed25519_dalek::VerifyingKey)> {
    let key = match path {
        Some(path) => crate::signing::load_signing_key(path)?,
        None => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
            ed25519_dalek::SigningKey::from_bytes(&seed)
        }
    };
    Ok((link::Identity::new(&key), key.verifying_key()))
}

/// TCP keepalive on a link: a machine that vanishes from the network (cable pulled, power cut) sends no
/// reset, so without it a link would wait on it for ever. About 20 s of silence from the other machine's
/// kernel ends the link.
fn keep_alive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(3))
        .with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}
