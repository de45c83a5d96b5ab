//! The link between a stove that runs a model and the workers that lend it their devices. ggml's RPC protocol
//! has neither authentication nor encryption, and its server parses whatever bytes arrive; so between machines
//! stove carries it inside a Noise channel, and ggml's own socket listens on loopback only.
//!
//! - **Noise XX** (`Noise_XX_25519_ChaChaPoly_BLAKE2s`, through the `snow` crate): both sides prove their static
//!   key, the traffic is encrypted and authenticated, and each connection has fresh keys, so a recorded
//!   handshake replayed later cannot finish and recorded traffic cannot be sent again. XX rather than IK: the
//!   worker learns who calls only in the third message, which only the holder of the first message's ephemeral
//!   key can write, so a replayed first message gets nowhere.
//! - **Keys** are the Ed25519 keys `stove keygen` makes, converted to X25519 the way libsodium does
//!   (`crypto_sign_ed25519_*_to_curve25519`): one key pair per machine signs bundles and opens links. A worker
//!   accepts only the public keys it was given; the main instance accepts only the worker key it named.
//! - **Versions**: each side sends its stove version and ggml's RPC protocol version inside the handshake
//!   (encrypted); differing RPC protocols are refused with both versions named.
//! - **Nothing reaches ggml** before the handshake has finished with an accepted key: the caller opens ggml's
//!   socket only for a `Link`. A handshake has [`HANDSHAKE_TIME`] to finish, so a silent or slow peer is dropped.
//!
//! On the wire every message (handshake or data) is a 2-byte big-endian length and that many bytes, at most
//! Noise's 65,535.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use snow::{HandshakeState, StatelessTransportState};

const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Names the protocol inside the handshake hash: a peer speaking anything else fails the handshake.
const PROLOGUE: &[u8] = b"stove rpc link 1";
/// Longest a handshake may take before the peer is dropped.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// Noise's largest message; a data message carries this less the 16-byte tag.
const MAX_MESSAGE: usize = 65_535;
const TAG: usize = 16;

/// What each side says about itself inside the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub stove: String,
    /// ggml's RPC protocol, `major.minor.patch` (`RPC_PROTO_*_VERSION` in ggml-rpc.h).
    pub rpc: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the handshake took longer than {} s", HANDSHAKE_TIME.as_secs())]
    TimedOut,
    #[error("it does not speak stove's link ({0})")]
    NotALink(String),
    #[error("it closed the connection during the handshake{0}")]
    Closed(&'static str),
    #[error("its key {0} is not one this worker accepts (start the worker with --allow-key naming its .pub file)")]
    KeyNotAllowed(String),
    #[error("it is not the worker named: its key is {found}, not {expected}")]
    WrongWorker { expected: String, found: String },
    #[error("it is busy: {0}")]
    Busy(String),
    #[error(
        "it runs ggml RPC protocol {theirs_rpc} (stove {theirs_stove}) and this stove runs {ours_rpc} (stove \
         {ours_stove}); use the same stove version on both machines"
    )]
    Versions { ours_stove: String, ours_rpc: String, theirs_stove: String, theirs_rpc: String },
}

/// This machine's key, as Noise uses it.
pub struct Identity {
    secret: [u8; 32],
}

impl Identity {
    pub fn new(key: &SigningKey) -> Identity {
        Identity { secret: key.to_scalar_bytes() }
    }
}

/// The X25519 public key an Ed25519 public key converts to (what the peer proves in the handshake).
fn x25519(key: &VerifyingKey) -> [u8; 32] {
    key.to_montgomery().to_bytes()
}

/// A key as people compare them: the fingerprint `stove keygen`'s files show, where the key is known.
fn shown(key: &[u8], known: &[VerifyingKey]) -> String {
    match known.iter().find(|k| x25519(k) == key) {
        Some(k) => crate::signing::fingerprint(k),
        None => format!("X25519 {}", crate::pack::hex(&key[..8])),
    }
}

/// An established link: the connection and the keys of each direction.
pub struct Link {
    stream: TcpStream,
    transport: Arc<StatelessTransportState>,
    /// The next nonce of each direction (the worker's "ready" took its first).
    out_nonce: u64,
    in_nonce: u64,
    /// The peer's versions, as it sent them.
    pub peer: Versions,
    /// The peer's X25519 key, as it proved it.
    key: Vec<u8>,
}

/// The worker's first sealed message: the handshake is over, its key was accepted and ggml's server is the
/// caller's. Without it the caller could not tell a refusal (the worker closes) from a link that is simply
/// quiet. A worker that serves another instance sends [`BUSY`] and why instead.
const READY: &[u8] = b"ready";
const BUSY: &[u8] = b"busy: ";

/// Which keys a side accepts from its peer: the ones it was given, or any (only ever on loopback, where the
/// link still encrypts but the peer is this machine).
#[derive(Debug, Clone, Copy)]
pub enum Accepted<'a> {
    Keys(&'a [VerifyingKey]),
    Any,
}

impl Accepted<'_> {
    fn accepts(&self, key: &[u8]) -> bool {
        match self {
            Accepted::Keys(keys) => keys.iter().any(|k| x25519(k)[..] == key[..]),
            Accepted::Any => true,
        }
    }

    fn known(&self) -> &[VerifyingKey] {
        match self {
            Accepted::Keys(keys) => keys,
            Accepted::Any => &[],
        }
    }
}

/// The worker's side: the handshake with whoever connected, who must hold a key `allowed` accepts. The
/// caller then either [`Link::admit`]s it or [`Link::turn_away`]s it.
pub fn accept(stream: TcpStream, identity: &Identity, allowed: Accepted, ours: &Versions) -> Result<Link, LinkError> {
    let mut noise = builder(identity)?.build_responder().map_err(noise_error)?;
    let mut stream = handshake_timing(stream)?;
    read_handshake(&mut stream, &mut noise)?;
    write_handshake(&mut stream, &mut noise, Some(ours))?;
    let peer = read_handshake(&mut stream, &mut noise)?;
    let key = noise.get_remote_static().unwrap_or_default().to_vec();
    if !allowed.accepts(&key) {
        return Err(LinkError::KeyNotAllowed(shown(&key, allowed.known())));
    }
    let mut link = finish(stream, noise, peer, ours)?;
    link.key = key;
    Ok(link)
}

/// The main instance's side: the handshake with a worker, whose key `expected` must accept.
pub fn connect(stream: TcpStream, identity: &Identity, expected: Accepted, ours: &Versions) -> Result<Link, LinkError> {
    let mut noise = builder(identity)?.build_initiator().map_err(noise_error)?;
    let mut stream = handshake_timing(stream)?;
    write_handshake(&mut stream, &mut noise, None)?;
    let peer = read_handshake(&mut stream, &mut noise)?;
    let key = noise.get_remote_static().unwrap_or_default().to_vec();
    // Checked before this side proves its own key: an impostor learns nothing of who called.
    if !expected.accepts(&key) {
        let expected = expected.known().iter().map(crate::signing::fingerprint).collect::<Vec<_>>().join(" or ");
        return Err(LinkError::WrongWorker { expected, found: shown(&key, &[]) });
    }
    // The last message goes even when the versions differ, so the worker can say why too.
    write_handshake(&mut stream, &mut noise, Some(ours))?;
    let mut link = finish(stream, noise, peer, ours)?;
    link.stream.set_read_timeout(Some(HANDSHAKE_TIME))?;
    let refused = " (the worker does not accept this instance's key: give the worker --allow-key with its .pub file)";
    let frame = read_frame(&mut link.stream).map_err(timed)?.ok_or(LinkError::Closed(refused))?;
    let mut opened = vec![0u8; frame.len()];
    let len = link.transport.read_message(0, &frame, &mut opened).map_err(noise_error)?;
    if let Some(why) = opened[..len].strip_prefix(BUSY) {
        return Err(LinkError::Busy(String::from_utf8_lossy(why).into_owned()));
    }
    if &opened[..len] != READY {
        return Err(LinkError::NotALink("its first message is not the worker's ready".into()));
    }
    link.stream.set_read_timeout(None)?;
    link.in_nonce = 1;
    link.key = key;
    Ok(link)
}

fn builder(identity: &Identity) -> Result<snow::Builder<'_>, LinkError> {
    let params = PATTERN.parse().map_err(noise_error)?;
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .map_err(noise_error)?
        .local_private_key(&identity.secret)
        .map_err(noise_error)
}

fn noise_error(e: snow::Error) -> LinkError {
    LinkError::NotALink(e.to_string())
}

fn handshake_timing(stream: TcpStream) -> Result<TcpStream, LinkError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIME))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIME))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn finish(stream: TcpStream, noise: HandshakeState, peer: Versions, ours: &Versions) -> Result<Link, LinkError> {
    check_versions(ours, &peer)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    let transport = noise.into_stateless_transport_mode().map_err(noise_error)?;
    Ok(Link { stream, transport: Arc::new(transport), out_nonce: 0, in_nonce: 0, peer, key: Vec::new() })
}

fn check_versions(ours: &Versions, theirs: &Versions) -> Result<(), LinkError> {
    if ours.rpc == theirs.rpc {
        return Ok(());
    }
    Err(LinkError::Versions {
        ours_stove: ours.stove.clone(),
        ours_rpc: ours.rpc.clone(),
        theirs_stove: theirs.stove.clone(),
        theirs_rpc: theirs.rpc.clone(),
    })
}

/// Writes the next handshake message, carrying `versions` (in the second and third, which Noise encrypts).
fn write_handshake(
    stream: &mut TcpStream,
    noise: &mut HandshakeState,
    versions: Option<&Versions>,
) -> Result<(), LinkError> {
    let payload = versions.map(|v| serde_json::to_vec(v).expect("two strings")).unwrap_or_default();
    let mut message = vec![0u8; MAX_MESSAGE];
    let len = noise.write_message(&payload, &mut message).map_err(noise_error)?;
    write_frame(stream, &message[..len]).map_err(timed)?;
    Ok(())
}

/// Reads the next handshake message; its payload holds the peer's versions (empty in the first message).
fn read_handshake(stream: &mut TcpStream, noise: &mut HandshakeState) -> Result<Versions, LinkError> {
    let frame = match read_frame(stream) {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(LinkError::Closed(if noise.is_initiator() { " (is it a stove worker?)" } else { "" })),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(LinkError::NotALink("it sent part of a message and closed".into()))
        }
        Err(e) => return Err(timed(e)),
    };
    let mut payload = vec![0u8; MAX_MESSAGE];
    let len = noise.read_message(&frame, &mut payload).map_err(noise_error)?;
    if len == 0 {
        return Ok(Versions { stove: String::new(), rpc: String::new() });
    }
    serde_json::from_slice(&payload[..len]).map_err(|e| LinkError::NotALink(format!("its versions: {e}")))
}

fn timed(e: io::Error) -> LinkError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkError::TimedOut,
        _ => LinkError::Io(e),
    }
}

fn write_frame(stream: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u16::try_from(bytes.len()).map_err(|_| io::Error::other("a link message over 64 KiB"))?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(bytes)
}

/// The next frame, or `None` when the peer closed the connection between frames.
fn read_frame(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut frame = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame)?;
    Ok(Some(frame))
}

impl Link {
    /// The worker's side: tells the caller ggml's server is its now (see [`READY`]).
    pub fn admit(&mut self) -> io::Result<()> {
        self.send_first(READY)
    }

    /// The worker's side: tells the caller why it is not served, and closes.
    pub fn turn_away(mut self, why: &str) -> io::Result<()> {
        self.send_first(&[BUSY, why.as_bytes()].concat())?;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        Ok(())
    }

    fn send_first(&mut self, message: &[u8]) -> io::Result<()> {
        let mut sealed = vec![0u8; message.len() + TAG];
        let len = self.transport.write_message(0, message, &mut sealed).map_err(io::Error::other)?;
        write_frame(&mut self.stream, &sealed[..len])?;
        self.out_nonce = 1;
        Ok(())
    }

    /// The peer's key as people compare them, where it is one of `known`.
    pub fn peer_key(&self, known: &[VerifyingKey]) -> String {
        shown(&self.key, known)
    }

    /// The link's two directions, to use from two threads.
    pub fn split(self) -> io::Result<(Sender, Receiver)> {
        let Link { stream, transport, out_nonce, in_nonce, .. } = self;
        stream.set_nodelay(true)?;
        let sender = Sender {
            stream: stream.try_clone()?,
            transport: Arc::clone(&transport),
            nonce: out_nonce,
            pending: Vec::with_capacity(MAX_MESSAGE - TAG),
            sealed: vec![0u8; MAX_MESSAGE + 2],
        };
        let receiver = Receiver { stream, transport, nonce: in_nonce, opened: vec![0u8; MAX_MESSAGE] };
        Ok((sender, receiver))
    }

    /// Carries bytes both ways between `plain` (ggml's RPC server, on the worker) and the peer, encrypting one
    /// way and decrypting the other, until either side closes. A message that does not decrypt (altered,
    /// replayed, out of order) ends the link: nothing of it reaches `plain`.
    pub fn pump(self, plain: TcpStream) -> io::Result<()> {
        plain.set_nodelay(true)?;
        let (mut sender, mut receiver) = self.split()?;
        let mut plain_in = plain.try_clone()?;
        let outgoing = std::thread::Builder::new().name("stove-link-out".into()).spawn(move || {
            let mut buffer = vec![0u8; MAX_MESSAGE - TAG];
            let result = (|| -> io::Result<()> {
                loop {
                    let n = plain_in.read(&mut buffer)?;
                    if n == 0 {
                        return Ok(());
                    }
                    sender.write(&buffer[..n])?;
                    sender.flush()?;
                }
            })();
            sender.close();
            result
        })?;
        let mut plain_out = plain;
        let incoming = (|| -> io::Result<()> {
            while let Some(bytes) = receiver.recv()? {
                plain_out.write_all(bytes)?;
            }
            Ok(())
        })();
        let _ = plain_out.shutdown(std::net::Shutdown::Both);
        receiver.close();
        let outgoing = outgoing.join().unwrap_or_else(|_| Err(io::Error::other("the link's sending thread panicked")));
        incoming.and(outgoing)
    }
}

/// The sending direction of a link: bytes written are sealed into messages of up to 64 KiB, sent when one is
/// full and more come, or at `flush`.
pub struct Sender {
    stream: TcpStream,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    pending: Vec<u8>,
    /// One frame on the wire: its length, then the sealed message (written in one call, so one packet).
    sealed: Vec<u8>,
}

impl Sender {
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // A full message goes when more bytes come, never as the last byte is written: the caller's
            // `flush` sends the end of what it wrote, after whatever it must do first.
            if self.pending.len() == MAX_MESSAGE - TAG {
                self.flush()?;
            }
            let n = (MAX_MESSAGE - TAG - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Sends what was written and not yet sent.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let len =
            self.transport.write_message(self.nonce, &self.pending, &mut self.sealed[2..]).map_err(io::Error::other)?;
        self.nonce += 1;
        self.sealed[..2].copy_from_slice(&(len as u16).to_be_bytes());
        self.stream.write_all(&self.sealed[..2 + len])?;
        self.pending.clear();
        Ok(())
    }

    /// Ends the connection both ways (the receiving half sees the end too).
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The receiving direction of a link.
pub struct Receiver {
    stream: TcpStream,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    opened: Vec<u8>,
}

impl Receiver {
    /// The next message's bytes, or `None` when the peer closed the connection between messages. A message
    /// that does not decrypt is an error (`InvalidData`): the caller must end the link.
    pub fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        let Some(frame) = read_frame(&mut self.stream)? else { return Ok(None) };
        let len = self
            .transport
            .read_message(self.nonce, &frame, &mut self.opened)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a link message did not decrypt"))?;
        self.nonce += 1;
        Ok(Some(&self.opened[..len]))
    }

    /// Ends the connection both ways.
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn versions(rpc: &str) -> Versions {
        Versions { stove: "0.1.0".into(), rpc: rpc.into() }
    }

    /// The main instance's side of a link to the worker at `address`, with `from`'s key, expecting `worker`'s.
    fn dial(
        address: std::net::SocketAddr,
        from: &SigningKey,
        worker: &SigningKey,
        rpc: &str,
    ) -> Result<Link, LinkError> {
        let expected = [worker.verifying_key()];
        connect(TcpStream::connect(address).unwrap(), &Identity::new(from), Accepted::Keys(&expected), &versions(rpc))
    }

    /// A loopback pair standing in for ggml's client and the end of it a link pumps.
    fn plain_pair() -> (TcpStream, TcpStream) {
        let local = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(local.local_addr().unwrap()).unwrap();
        (client, local.accept().unwrap().0)
    }

    /// A worker on a loopback port that accepts `allowed` and echoes, through the link, what it receives; the
    /// handshake's result comes back on the returned channel.
    fn worker(
        worker_key: SigningKey,
        allowed: Vec<VerifyingKey>,
        rpc: &'static str,
    ) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Result<Versions, String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (sent, results) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let identity = Identity::new(&worker_key);
                match accept(stream.unwrap(), &identity, Accepted::Keys(&allowed), &versions(rpc)) {
                    Ok(mut link) => {
                        link.admit().unwrap();
                        let _ = sent.send(Ok(link.peer.clone()));
                        // ggml's side: an echo server on loopback.
                        let (plain, mut server) = plain_pair();
                        std::thread::spawn(move || {
                            let mut reader = server.try_clone().unwrap();
                            let _ = io::copy(&mut reader, &mut server);
                        });
                        std::thread::spawn(move || link.pump(plain));
                    }
                    Err(e) => {
                        let _ = sent.send(Err(e.to_string()));
                    }
                }
            }
        });
        (address, results)
    }

    #[test]
    fn the_right_keys_open_a_link_that_carries_bytes_both_ways() {
        let (main, work) = (key(1), key(2));
        let (address, results) = worker(work.clone(), vec![main.verifying_key()], "7.0.0");
        let link = dial(address, &main, &work, "7.0.0").unwrap();
        assert_eq!(link.peer.rpc, "7.0.0");
        assert_eq!(results.recv().unwrap().unwrap().stove, "0.1.0");
        // ggml's client side on the main instance: a loopback pair whose far end the link pumps.
        let (mut client, plain) = plain_pair();
        std::thread::spawn(move || link.pump(plain));
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = client.try_clone().unwrap();
        let sent = message.clone();
        std::thread::spawn(move || writer.write_all(&sent));
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).unwrap();
        assert!(echoed == message, "200 kB came back through both links unchanged");
    }

    #[test]
    fn a_key_the_worker_was_not_given_is_refused_and_the_worker_keeps_serving() {
        let (main, stranger, work) = (key(1), key(3), key(2));
        let (address, results) = worker(work.clone(), vec![main.verifying_key()], "7.0.0");
        let refused = dial(address, &stranger, &work, "7.0.0");
        assert!(matches!(refused, Err(LinkError::Closed(_))), "{:?}", refused.err());
        let said = results.recv().unwrap().unwrap_err();
        assert!(said.contains("is not one this worker accepts"), "{said}");
        // The right peer is served afterwards.
        let link = dial(address, &main, &work, "7.0.0");
        assert!(link.is_ok());
    }

    #[test]
    fn the_main_instance_refuses_a_worker_with_another_key_and_other_versions() {
        let (main, work, impostor) = (key(1), key(2), key(4));
        let (address, _) = worker(impostor, vec![main.verifying_key()], "7.0.0");
        let wrong = dial(address, &main, &work, "7.0.0");
        assert!(matches!(wrong, Err(LinkError::WrongWorker { .. })), "{:?}", wrong.err());

        let (address, results) = worker(work.clone(), vec![main.verifying_key()], "6.1.0");
        let old = dial(address, &main, &work, "7.0.0");
        let message = old.err().unwrap().to_string();
        assert!(message.contains("6.1.0") && message.contains("7.0.0"), "{message}");
        drop(results);
    }

    #[test]
    fn garbage_and_a_replayed_handshake_get_nowhere() {
        let (main, work) = (key(1), key(2));
        let (address, results) = worker(work.clone(), vec![main.verifying_key()], "7.0.0");
        let mut garbage = TcpStream::connect(address).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        garbage.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(results.recv().unwrap().unwrap_err().contains("does not speak stove's link"));

        // A recorded first message, sent again: the worker answers, but the third message cannot be forged, so
        // the handshake never finishes (here the replayer gives up and closes).
        let mut initiator = builder(&Identity::new(&main)).unwrap().build_initiator().unwrap();
        let mut first = vec![0u8; MAX_MESSAGE];
        let len = initiator.write_message(&[], &mut first).unwrap();
        for _ in 0..2 {
            let mut replay = TcpStream::connect(address).unwrap();
            write_frame(&mut replay, &first[..len]).unwrap();
            assert!(read_frame(&mut replay).unwrap().is_some(), "the worker answers the first message");
            write_frame(&mut replay, &[0u8; 96]).unwrap();
            assert!(results.recv().unwrap().unwrap_err().contains("does not speak stove's link"));
        }
        assert!(dial(address, &main, &work, "7.0.0").is_ok());
    }

    #[test]
    fn an_altered_message_ends_the_link_and_nothing_of_it_goes_through() {
        let (main, work) = (key(1), key(2));
        let (address, results) = worker(work.clone(), vec![main.verifying_key()], "7.0.0");
        // A machine in the middle that passes the handshake on and flips one bit of the first data message.
        let middle = TcpListener::bind("127.0.0.1:0").unwrap();
        let middle_address = middle.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut from_main, _) = middle.accept().unwrap();
            let mut to_worker = TcpStream::connect(address).unwrap();
            let (mut back_from_worker, mut back_to_main) =
                (to_worker.try_clone().unwrap(), from_main.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = io::copy(&mut back_from_worker, &mut back_to_main);
                let _ = back_to_main.shutdown(std::net::Shutdown::Both);
            });
            let mut frames = 0;
            while let Ok(Some(mut frame)) = read_frame(&mut from_main) {
                frames += 1;
                if frames == 3 {
                    frame[0] ^= 1; // the first message after the two handshake messages this way
                }
                if write_frame(&mut to_worker, &frame).is_err() {
                    break;
                }
            }
        });
        let link = dial(middle_address, &main, &work, "7.0.0").unwrap();
        assert!(results.recv().unwrap().is_ok());
        let (mut client, plain) = plain_pair();
        std::thread::spawn(move || link.pump(plain));
        client.write_all(b"a request ggml would act on").unwrap();
        let mut echoed = Vec::new();
        client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let read = client.read_to_end(&mut echoed);
        assert!(read.is_ok() && echoed.is_empty(), "the link closed and echoed nothing: {read:?} {echoed:?}");
    }
}
