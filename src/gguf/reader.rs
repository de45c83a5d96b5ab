//! Bounded little-endian reading of a GGUF header: every length is checked against what is left of the file
//! before anything is allocated or skipped.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

use super::{corrupt, GgufError};

/// A metadata value we keep: scalars and strings. Arrays (the tokenizer's vocabulary) are skipped.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Uint(u64),
    Int(i64),
    Str(String),
}

/// Longest string value kept in memory; chat templates are a few KiB, the longest seen in the wild ~30 KiB.
pub(super) const MAX_KEPT_STRING: u64 = 1 << 20;

/// Bytes of a GGUF value of fixed size; `None` for strings and arrays.
fn scalar_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Little-endian reads within `[offset, offset + len)` of a file, with every length checked against the end.
pub(super) struct HeaderReader<R> {
    inner: BufReader<R>,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> HeaderReader<R> {
    pub fn new(mut file: R, start: u64, len: u64) -> io::Result<Self> {
        file.seek(SeekFrom::Start(start))?;
        Ok(Self { inner: BufReader::with_capacity(1 << 16, file), len, pos: 0 })
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    pub fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::Corrupt(format!(
                "it claims {count} {what}, more than its {} bytes can hold",
                self.len
            )));
        }
        Ok(())
    }

    pub fn exact(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        if buf.len() as u64 > self.remaining() {
            return Err(GgufError::Corrupt(format!("it ends at byte {} in the middle of the header", self.len)));
        }
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Corrupt(format!(
                "a value of {n} bytes runs past the end of the file at byte {}",
                self.len
            )));
        }
        self.inner.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    pub fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    pub fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// Reads a string; returns it if it is at most `keep` bytes, otherwise skips it and returns `None`.
    pub fn string(&mut self, keep: u64) -> Result<Option<String>, GgufError> {
        let n = self.u64()?;
        if n > keep {
            self.skip(n)?;
            return Ok(None);
        }
        let mut buf = vec![0u8; n as usize];
        self.exact(&mut buf)?;
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// Reads one value of GGUF type `value_type`; arrays are skipped and give `None`.
    pub fn value(&mut self, value_type: u32) -> Result<Option<Value>, GgufError> {
        Ok(Some(match value_type {
            0 => Value::Uint(u8::from_le_bytes(self.bytes()?).into()),
            1 => Value::Int(i8::from_le_bytes(self.bytes()?).into()),
            2 => Value::Uint(u16::from_le_bytes(self.bytes()?).into()),
            3 => Value::Int(i16::from_le_bytes(self.bytes()?).into()),
            4 => Value::Uint(self.u32()?.into()),
            5 => Value::Int(i32::from_le_bytes(self.bytes()?).into()),
            // Booleans as 0 or 1 (a projector's `clip.has_vision_encoder`); floats: nothing stove reads.
            7 => Value::Uint(u8::from_le_bytes(self.bytes()?).into()),
            6 | 12 => return self.skip(scalar_size(value_type).expect("a scalar type")).map(|()| None),
            8 => match self.string(MAX_KEPT_STRING)? {
                Some(s) => Value::Str(s),
                None => return Ok(None),
            },
            9 => {
                let item_type = self.u32()?;
                let count = self.u64()?;
                self.skip_array(item_type, count)?;
                return Ok(None);
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            other => return Err(GgufError::Corrupt(format!("unknown value type {other}"))),
        }))
    }

    fn skip_array(&mut self, item_type: u32, count: u64) -> Result<(), GgufError> {
        if let Some(size) = scalar_size(item_type) {
            return self.skip(count.saturating_mul(size));
        }
        // llama.cpp refuses arrays of arrays too; following them would let a small file nest deep enough to
        // overflow the stack.
        if item_type != 8 {
            return Err(corrupt(format!("an array holds items of type {item_type}; only scalars and strings may")));
        }
        // Each string takes at least 8 bytes, which bounds the loop.
        self.check_count(count, 8, "array items")?;
        for _ in 0..count {
            self.value(item_type)?;
        }
        Ok(())
    }
}
