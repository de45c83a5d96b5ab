//! The response body type: a whole buffer, or chunks from a channel (server-sent events).
//!
//! When the client goes away hyper drops the body, which drops the channel's receiver; the task feeding it
//! then stops the generation: at once while it waits for the engine ([`next_event`]), or at its next send.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, SizeHint};
use tokio::sync::mpsc;

/// The engine's next event for a stream, or `None` when the engine is done or the client has gone. Waiting on
/// both matters during a long prompt: no event comes until its first token, and a client that left meanwhile
/// must free its slot now (the caller returns and drops `events`), not after the whole prompt is read.
pub async fn next_event<E>(events: &mut mpsc::UnboundedReceiver<E>, chunks: &mpsc::Sender<Bytes>) -> Option<E> {
    tokio::select! {
        event = events.recv() => event,
        () = chunks.closed() => None,
    }
}

pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    /// A server-sent event stream fed by a task through the returned sender (16 events may wait).
    pub fn event_stream() -> (mpsc::Sender<Bytes>, hyper::Response<Body>) {
        let (chunks, receiver) = mpsc::channel(16);
        let response = hyper::Response::builder()
            .header(hyper::header::CONTENT_TYPE, "text/event-stream")
            .header(hyper::header::CACHE_CONTROL, "no-cache")
            .body(Body::Stream(receiver))
            .expect("valid response");
        (chunks, response)
    }

    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(receiver) => receiver.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
