//! The frames between the daemon and a transform worker, over the worker's stdin and stdout.
//!
//! - Worker, once at start: a reply frame of kind [`HELLO`] whose payload is [`GREETING`], so
//!   the daemon knows it started the right program (and the same protocol).
//! - Daemon, per call: `u32 program length, u32 input length, u64 memory budget, u64 output
//!   budget` (big-endian), then the program text, then the input bytes.
//! - Worker, per call: `u8 kind, u32 length`, then the payload: the output JSON for [`OK`],
//!   else a message.
//!
//! Lengths are checked against budgets on both sides before anything is allocated.

use std::io::{self, Read, Write};

pub const GREETING: &[u8] = b"secretproxy-transform-worker/1";

/// Reply kinds.
pub const OK: u8 = 0;
pub const NOT_JSON: u8 = 1;
pub const TOO_DEEP: u8 = 2;
pub const PROGRAM: u8 = 3;
/// A bound of the engine was hit (output size or depth, `fromjson` depth).
pub const LIMIT: u8 = 4;
/// The engine panicked; the worker exits after sending this.
pub const INTERNAL: u8 = 5;
pub const HELLO: u8 = 0xff;

/// The longest program a worker accepts.
pub const MAX_PROGRAM: u32 = 1 << 20;
/// The longest message (non-[`OK`] payload) the daemon accepts.
pub const MAX_MESSAGE: u32 = 64 * 1024;

/// The fixed part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub program_len: u32,
    pub input_len: u32,
    /// Address-space budget of the call in bytes (the worker's `RLIMIT_AS` while it runs).
    pub memory: u64,
    /// The largest output in bytes.
    pub max_output: u64,
}

impl RequestHead {
    pub const LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(&self.program_len.to_be_bytes());
        out[4..8].copy_from_slice(&self.input_len.to_be_bytes());
        out[8..16].copy_from_slice(&self.memory.to_be_bytes());
        out[16..24].copy_from_slice(&self.max_output.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; Self::LEN]) -> RequestHead {
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        RequestHead {
            program_len: u32_at(0),
            input_len: u32_at(4),
            memory: u64_at(8),
            max_output: u64_at(16),
        }
    }
}

/// The fixed part of a reply.
pub fn reply_head(kind: u8, len: u32) -> [u8; 5] {
    let mut out = [kind, 0, 0, 0, 0];
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

pub fn decode_reply_head(bytes: &[u8; 5]) -> (u8, u32) {
    (bytes[0], u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

/// Worker side: writes one reply frame.
pub fn write_reply(out: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("reply too long"))?;
    out.write_all(&reply_head(kind, len))?;
    out.write_all(payload)?;
    out.flush()
}

/// Worker side: reads the fixed part of a request; `None` at a clean end of input.
pub fn read_head(input: &mut impl Read) -> io::Result<Option<RequestHead>> {
    let mut head = [0u8; RequestHead::LEN];
    let mut filled = 0;
    while filled < head.len() {
        match input.read(&mut head[filled..])? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(Some(RequestHead::decode(&head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let head = RequestHead {
            program_len: 7,
            input_len: u32::MAX,
            memory: 1 << 40,
            max_output: 3,
        };
        assert_eq!(RequestHead::decode(&head.encode()), head);
        assert_eq!(decode_reply_head(&reply_head(PROGRAM, 513)), (PROGRAM, 513));
        let mut bytes = &head.encode()[..];
        assert_eq!(read_head(&mut bytes).unwrap(), Some(head));
        assert_eq!(read_head(&mut &b""[..]).unwrap(), None);
        assert!(read_head(&mut &b"abc"[..]).is_err());
    }
}
