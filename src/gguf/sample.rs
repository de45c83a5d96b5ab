//! A small valid GGUF for tests here and in other modules.

pub fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A small GGUF: architecture, context length, file type, a string array, and two tensors.
pub fn sample() -> Vec<u8> {
    let mut g = b"GGUF".to_vec();
    g.extend(3u32.to_le_bytes());
    g.extend(2u64.to_le_bytes()); // tensors
    g.extend(5u64.to_le_bytes()); // keys
    g.extend(string("general.architecture"));
    g.extend(8u32.to_le_bytes());
    g.extend(string("llama"));
    g.extend(string("llama.context_length"));
    g.extend(4u32.to_le_bytes());
    g.extend(8192u32.to_le_bytes());
    g.extend(string("general.file_type"));
    g.extend(4u32.to_le_bytes());
    g.extend(3u32.to_le_bytes());
    g.extend(string("tokenizer.ggml.tokens"));
    g.extend(9u32.to_le_bytes());
    g.extend(8u32.to_le_bytes());
    g.extend(2u64.to_le_bytes());
    g.extend(string("a"));
    g.extend(string("b"));
    g.extend(string("tokenizer.chat_template"));
    g.extend(8u32.to_le_bytes());
    g.extend(string("{{ messages }}"));
    // F32 tensors: 48 bytes at 0, 20 bytes at 64.
    for (name, dims, offset) in [("a", vec![4u64, 3], 0u64), ("b", vec![5u64], 64)] {
        g.extend(string(name));
        g.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            g.extend(d.to_le_bytes());
        }
        g.extend(0u32.to_le_bytes());
        g.extend(offset.to_le_bytes());
    }
    let data_start = g.len().div_ceil(32) * 32;
    g.resize(data_start + 84, 0);
    g
}
