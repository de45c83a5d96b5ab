//! Who may hold a connection: at most `MAX_CONNECTIONS` in all and `MAX_PER_PEER` from one address, and a
//! connection that has not sent a byte gives way to a newcomer.
//!
//! Idle sockets are the cheapest attack on a server: 512 connections that send nothing used to hold every
//! place until their header timeout, and reopening them kept everyone else out, with no key needed. Now a
//! connection that stays silent is closed after `FIRST_BYTES`, and when the server is full (or a peer holds
//! its share) the oldest silent one is closed at once to make room, so a client that sends its request is
//! served while an attacker holds idle sockets. A connection that has spoken is never closed for another.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Most connections from one address; the rest of the places stay for others.
pub const MAX_PER_PEER: usize = 128;
/// How long a new connection may stay silent before it is closed.
pub const FIRST_BYTES: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Connections {
    open: Mutex<Vec<Open>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Connections closed to make room or for their silence, and newcomers refused because all were busy.
    pub closed_silent: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
}

struct Open {
    id: u64,
    peer: IpAddr,
    opened: Instant,
    spoke: Arc<AtomicBool>,
    close: Arc<Notify>,
}

/// A connection's place; giving it up (drop) frees it.
pub struct Ticket {
    registry: Arc<Connections>,
    id: u64,
    /// Set once the connection has sent a byte.
    pub spoke: Arc<AtomicBool>,
    /// Notified when the connection must close to make room.
    pub close: Arc<Notify>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.registry.open.lock().expect("connections lock").retain(|open| open.id != self.id);
    }
}

impl Connections {
    /// A place for a new connection from `peer`, made by closing the oldest silent connection when the server
    /// or this peer's share is full; `None` when every connection in the way is busy with a request.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        let mut open = self.open.lock().expect("connections lock");
        let from_peer = open.iter().filter(|o| o.peer == peer).count();
        let full = open.len() >= MAX_CONNECTIONS;
        if from_peer >= MAX_PER_PEER || full {
            // The peer's own silent connections go first; the server's when only the total is at its limit.
            let candidates = open.iter().enumerate().filter(|(_, o)| !o.spoke.load(Ordering::Relaxed));
            let victim = if from_peer >= MAX_PER_PEER {
                candidates.filter(|(_, o)| o.peer == peer).min_by_key(|(_, o)| o.opened)
            } else {
                candidates.min_by_key(|(_, o)| o.opened)
            };
            let Some((at, _)) = victim else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let victim = open.swap_remove(at);
            victim.close.notify_one();
            self.closed_silent.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let spoke = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        open.push(Open { id, peer, opened: Instant::now(), spoke: Arc::clone(&spoke), close: Arc::clone(&close) });
        Some(Ticket { registry: Arc::clone(self), id, spoke, close })
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open.lock().expect("connections lock").len()
    }
}

/// Resolves when the connection must close: it was chosen to make room, or it stayed silent too long.
pub async fn must_close(ticket: &Ticket) {
    let silent = async {
        tokio::time::sleep(FIRST_BYTES).await;
        if ticket.spoke.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        ticket.registry.closed_silent.fetch_add(1, Ordering::Relaxed);
    };
    tokio::select! {
        _ = ticket.close.notified() => {}
        _ = silent => {}
    }
}

/// A socket that marks its connection as having spoken once a byte arrives.
pub struct Marked<S> {
    inner: S,
    spoke: Arc<AtomicBool>,
}

impl<S> Marked<S> {
    pub fn new(inner: S, spoke: Arc<AtomicBool>) -> Self {
        Marked { inner, spoke }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Marked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.spoke.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Marked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn a_full_server_closes_the_oldest_silent_connection_for_a_newcomer() {
        let registry = Arc::new(Connections::default());
        let attacker: IpAddr = "10.0.0.9".parse().unwrap();
        let others: Vec<IpAddr> = (1..=8).map(|i| format!("10.0.1.{i}").parse().unwrap()).collect();
        // One address holds its share, silently; a newcomer from it closes its own oldest.
        let mut held: Vec<Ticket> = (0..MAX_PER_PEER).map(|_| registry.admit(attacker).unwrap()).collect();
        let first_close = Arc::clone(&held[0].close);
        held.push(registry.admit(attacker).expect("room made"));
        assert!(futures_ready(first_close.notified()), "the oldest silent one was told to close");
        // The rest fill up from other addresses; a busy connection is never closed for another.
        let mut busy = Vec::new();
        while registry.open.lock().unwrap().len() < MAX_CONNECTIONS {
            let ticket = registry.admit(others[busy.len() % others.len()]).unwrap();
            ticket.spoke.store(true, Ordering::Relaxed);
            busy.push(ticket);
        }
        let newcomer = registry.admit(others[0]).expect("a silent attacker connection made room");
        newcomer.spoke.store(true, Ordering::Relaxed);
        for ticket in &held {
            ticket.spoke.store(true, Ordering::Relaxed);
        }
        assert!(registry.admit(others[0]).is_none(), "all busy: the newcomer is refused, nobody is closed");
        assert_eq!(registry.refused.load(Ordering::Relaxed), 1);
        drop(busy.pop());
        assert!(registry.admit(others[0]).is_some(), "a place freed by a closed connection is taken");
    }

    /// Whether a `Notified` future is already complete (a permit was stored for it).
    fn futures_ready(notified: tokio::sync::futures::Notified<'_>) -> bool {
        let mut notified = std::pin::pin!(notified);
        let waker = std::task::Waker::noop();
        notified.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }
}
