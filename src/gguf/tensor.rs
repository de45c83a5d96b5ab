//! A tensor's entry in a GGUF header, and the checks that keep llama.cpp from trusting a forged one.

use super::{corrupt, GgufError};

/// ggml's GGML_MAX_DIMS.
pub(super) const MAX_DIMS: u32 = 4;
/// A tensor's entry in the header: where its data claims to be.
pub(super) struct TensorSpan {
    pub name: String,
    pub dims: [u64; MAX_DIMS as usize],
    pub type_id: u32,
    pub offset: u64,
}

impl TensorSpan {
    /// Checks the tensor's type is one ggml knows, its rows hold whole blocks, and its bytes are aligned and
    /// end inside the data section (`data_len` bytes).
    /// Returns its size in bytes.
    pub fn check(&self, alignment: u64, data_len: u64) -> Result<u64, GgufError> {
        let name = &self.name;
        let Some((block, block_bytes)) = crate::llama::tensor_type_layout(self.type_id) else {
            return Err(corrupt(format!(
                "tensor {name:?} has type {}, which this llama.cpp does not know",
                self.type_id
            )));
        };
        if !self.dims[0].is_multiple_of(block) {
            return Err(corrupt(format!(
                "tensor {name:?} has rows of {} elements, not whole blocks of {block}",
                self.dims[0]
            )));
        }
        let elements = self.dims.iter().product::<u64>();
        let bytes = (elements / block).checked_mul(block_bytes);
        let end = bytes.and_then(|b| self.offset.checked_add(b));
        if !self.offset.is_multiple_of(alignment) {
            return Err(corrupt(format!("tensor {name:?} starts at {}, not a multiple of {alignment}", self.offset)));
        }
        match (bytes, end) {
            (Some(bytes), Some(end)) if end <= data_len => Ok(bytes),
            _ => Err(corrupt(format!(
                "tensor {name:?} would end past the file's {data_len} bytes of tensor data; the file is cut short \
                 or its header is forged"
            ))),
        }
    }
}
