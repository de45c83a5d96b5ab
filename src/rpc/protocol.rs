//! What stove knows of ggml's RPC protocol (`ggml/src/ggml-rpc/ggml-rpc.cpp`, protocol 7): how requests and
//! answers are framed, which commands get an answer and how big it is, and what a stand-in answer looks like.
//!
//! Why stove needs to know: ggml's RPC client ends the whole process (`GGML_ABORT`, "Remote RPC server crashed")
//! when a send or receive fails or an answer has the wrong size. A worker that dies or drops off the network
//! must end the answers in flight with an error, not the main instance. So the main instance's side of the
//! link (`remote.rs`) reads ggml's requests, and once the worker is lost it answers them itself with
//! well-formed, empty answers: ggml's client goes on, the engine sees the loss after the step, ends the answers
//! and stops using the model. The stand-in answers never reach a user: they keep ggml from aborting, nothing
//! more.
//!
//! A request is `| command (1 byte) | payload size (u64, little-endian) | payload |`; an answer, for the
//! commands that have one, is `| size (u64) | payload |`.

use std::io::{self, Read};

// The commands of `enum rpc_cmd`, in its order (HELLO is always 14).
const ALLOC_BUFFER: u8 = 0;
const GET_ALIGNMENT: u8 = 1;
const GET_MAX_SIZE: u8 = 2;
const BUFFER_GET_BASE: u8 = 3;
const FREE_BUFFER: u8 = 4;
const BUFFER_CLEAR: u8 = 5;
const SET_TENSOR: u8 = 6;
const SET_TENSOR_HASH: u8 = 7;
const GET_TENSOR: u8 = 8;
const COPY_TENSOR: u8 = 9;
const GRAPH_COMPUTE: u8 = 10;
const GET_DEVICE_MEMORY: u8 = 11;
const INIT_TENSOR: u8 = 12;
const GET_ALLOC_SIZE: u8 = 13;
const HELLO: u8 = 14;
const DEVICE_COUNT: u8 = 15;
const GRAPH_RECOMPUTE: u8 = 16;
const MEMSET_TENSOR: u8 = 17;

/// `RPC_CONN_CAPS_SIZE`: the transport capabilities in HELLO (zero: plain TCP).
const CONN_CAPS: usize = 24;

/// What stove keeps of one request from ggml's client: the command, the payload's size and its last eight
/// bytes (the size a GET_TENSOR asks for). The payload itself streams through: weights come in requests as
/// large as a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub command: u8,
    pub size: u64,
    tail: u64,
}

/// The largest piece of a payload `forward_request` hands on at once.
const PIECE: usize = 64 << 10;

/// Reads the next request from ggml, handing its bytes to `forward` as they come (the header first, then the
/// payload in pieces); `None` when ggml closed the connection between requests.
pub fn forward_request(
    from: &mut impl Read,
    mut forward: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Option<Request>> {
    let mut header = [0u8; 9];
    match from.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    from.read_exact(&mut header[1..])?;
    forward(&header)?;
    let size = u64::from_le_bytes(header[1..].try_into().expect("eight bytes"));
    let mut piece = vec![0u8; PIECE.min(usize::try_from(size).unwrap_or(PIECE))];
    let (mut left, mut last) = (size, [0u8; 8]);
    while left > 0 {
        let n = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        from.read_exact(&mut piece[..n]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => malformed("ggml closed the connection inside a request"),
            _ => e,
        })?;
        forward(&piece[..n])?;
        // The last eight bytes of the payload, across pieces.
        if n >= 8 {
            last.copy_from_slice(&piece[n - 8..n]);
        } else {
            last.rotate_left(n);
            last[8 - n..].copy_from_slice(&piece[..n]);
        }
        left -= n as u64;
    }
    Ok(Some(Request { command: header[0], size, tail: if size >= 8 { u64::from_le_bytes(last) } else { 0 } }))
}

impl Request {
    /// The size of the payload of this request's answer, or `None` when it gets none. An unknown command is an
    /// error: stove cannot tell where the next request starts.
    pub fn answer_size(&self) -> io::Result<Option<u64>> {
        Ok(match self.command {
            ALLOC_BUFFER | GET_DEVICE_MEMORY => Some(16),
            GET_ALIGNMENT | GET_MAX_SIZE | BUFFER_GET_BASE | GET_ALLOC_SIZE => Some(8),
            SET_TENSOR_HASH | COPY_TENSOR => Some(1),
            DEVICE_COUNT => Some(4),
            HELLO => Some(4 + CONN_CAPS as u64),
            // `rpc_msg_get_tensor_req`: a tensor, the offset, then the size asked for.
            GET_TENSOR if self.size >= 8 => Some(self.tail),
            GET_TENSOR => return Err(malformed("a GET_TENSOR request without a size")),
            FREE_BUFFER | BUFFER_CLEAR | SET_TENSOR | GRAPH_COMPUTE | INIT_TENSOR | GRAPH_RECOMPUTE | MEMSET_TENSOR => {
                None
            }
            other => return Err(malformed(&format!("ggml sent RPC command {other}, which stove does not know"))),
        })
    }

    /// The answer, size first, that stands in for a lost worker's: the protocol version for HELLO, no memory
    /// and a failed allocation (so nothing new is placed there), zeros for anything read back.
    pub fn stand_in(&self, protocol: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(size) = self.answer_size()? else { return Ok(None) };
        let mut payload = vec![0u8; usize::try_from(size).map_err(|_| malformed("an answer over the address space"))?];
        match self.command {
            HELLO => {
                let mut parts = protocol.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
                for byte in payload.iter_mut().take(3) {
                    *byte = parts.next().unwrap_or(0);
                }
            }
            // A power of two, as ggml's allocator requires.
            GET_ALIGNMENT => payload.copy_from_slice(&64u64.to_le_bytes()),
            GET_MAX_SIZE => payload.copy_from_slice(&u64::MAX.to_le_bytes()),
            // ggml asserts a buffer's base is not null.
            BUFFER_GET_BASE => payload.copy_from_slice(&4096u64.to_le_bytes()),
            // "Copied": ggml then does not fall back to reading the tensor through this machine.
            COPY_TENSOR => payload[0] = 1,
            _ => {}
        }
        let mut answer = Vec::with_capacity(8 + payload.len());
        answer.extend_from_slice(&size.to_le_bytes());
        answer.extend_from_slice(&payload);
        Ok(Some(answer))
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as ggml's client writes it, read back through `forward_request`.
    fn request(command: u8, payload: &[u8]) -> Request {
        let mut wire = vec![command];
        wire.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        wire.extend_from_slice(payload);
        let mut forwarded = Vec::new();
        let read = forward_request(&mut &wire[..], |bytes| {
            forwarded.extend_from_slice(bytes);
            Ok(())
        });
        assert_eq!(forwarded, wire, "every byte is handed on, in order");
        read.unwrap().unwrap()
    }

    #[test]
    fn requests_stream_through_whole() {
        let big = vec![7u8; 3 * PIECE + 5];
        assert_eq!(request(SET_TENSOR, &big).size, big.len() as u64);
        let mut wire = vec![DEVICE_COUNT];
        wire.extend_from_slice(&0u64.to_le_bytes());
        let mut reader = &wire[..];
        assert_eq!(forward_request(&mut reader, |_| Ok(())).unwrap().map(|r| r.command), Some(DEVICE_COUNT));
        assert_eq!(forward_request(&mut reader, |_| Ok(())).unwrap(), None, "closed between requests");
        // A request cut short is an error, not the end of the stream.
        let mut cut = vec![SET_TENSOR];
        cut.extend_from_slice(&50u64.to_le_bytes());
        cut.extend_from_slice(&[1; 20]);
        assert!(forward_request(&mut &cut[..], |_| Ok(())).is_err());
    }

    #[test]
    fn answers_are_sized_as_ggml_reads_them() {
        assert_eq!(request(HELLO, &[0; CONN_CAPS]).answer_size().unwrap(), Some(28));
        assert_eq!(request(GRAPH_COMPUTE, &[1, 2, 3]).answer_size().unwrap(), None);
        // The size asked for ends the request, even when it straddles two pieces.
        let mut get = vec![0u8; PIECE - 3];
        get.extend_from_slice(&1234u64.to_le_bytes());
        assert_eq!(request(GET_TENSOR, &get).answer_size().unwrap(), Some(1234));
        assert!(request(99, &[]).answer_size().is_err());
    }

    #[test]
    fn stand_in_answers_keep_ggml_going() {
        let hello = request(HELLO, &[0; CONN_CAPS]).stand_in("7.0.1").unwrap().unwrap();
        assert_eq!(&hello[..8], &28u64.to_le_bytes());
        assert_eq!(&hello[8..11], &[7, 0, 1]);
        let alloc = request(ALLOC_BUFFER, &[0; 12]).stand_in("7.0.0").unwrap().unwrap();
        assert_eq!(alloc, [16u64.to_le_bytes().to_vec(), vec![0; 16]].concat(), "a failed allocation");
        let alignment = request(GET_ALIGNMENT, &[0; 4]).stand_in("7.0.0").unwrap().unwrap();
        assert_eq!(&alignment[8..], &64u64.to_le_bytes());
        assert_eq!(request(FREE_BUFFER, &[0; 8]).stand_in("7.0.0").unwrap(), None);
    }
}
