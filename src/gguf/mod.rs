//! Reads the header of a GGUF file: the metadata stove shows and records in a bundle's manifest.
//!
//! Only the header is read (keys, tensor shapes), never the weights, and every length read from the file is
//! checked against what is left of it, so a truncated or hostile file gives an error, not a huge allocation.
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

mod reader;
#[cfg(test)]
pub mod sample;
mod tensor;

use std::collections::HashMap;
use std::io::{self, Read, Seek};

use reader::{HeaderReader, Value, MAX_KEPT_STRING};
use tensor::{TensorSpan, MAX_DIMS};

/// What stove needs to know about a model, read from its GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    pub name: Option<String>,
    pub architecture: String,
    pub parameters: u64,
    pub quantization: String,
    pub context_length: Option<u64>,
    pub chat_template: Option<String>,
    /// Whether the model pools its states into one vector per text (`{arch}.pooling_type`, not none): what
    /// embedding models carry.
    pub pools: bool,
    /// What a multimodal projector (architecture `clip`, an mmproj GGUF) reads, when this is one.
    pub projector: Option<ProjectorHeader>,
    /// Offset of the tensor data section from the start of the GGUF.
    pub data_offset: u64,
    pub layout: ModelLayout,
}

/// A projector's own description of itself (the keys llama.cpp's `clip` reads, `tools/mtmd/clip-impl.h`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorHeader {
    /// llama.cpp's name for its kind (`clip.projector_type`): gemma3, idefics3, qwen2vl_merger, ultravox …; two
    /// names joined by `+` for a model that both sees and hears.
    pub kind: String,
    /// Whether it reads pictures, and whether it reads sound.
    pub vision: bool,
    pub audio: bool,
}

/// What deciding how much of a model fits on a GPU needs: the weights of each layer (block) and the rest, and
/// the attention shape that sets the KV cache's size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelLayout {
    /// Bytes of each repeating block's tensors (`blk.N.*`), by block.
    pub layer_bytes: Vec<u64>,
    /// Bytes of everything else: token embeddings, output norm and head.
    pub other_bytes: u64,
    /// Per token and layer, the KV cache's bytes at 16 bits a value (keys and values of every KV head).
    pub kv_bytes_per_token_layer: u64,
    /// The token embedding's shape: numbers per token between layers, and tokens in the vocabulary (what
    /// crosses between machines per token: `hardware::offload`'s link estimate).
    pub width: u64,
    pub vocabulary: u64,
}

impl ModelLayout {
    pub fn weight_bytes(&self) -> u64 {
        self.layer_bytes.iter().sum::<u64>() + self.other_bytes
    }

    /// Counts a tensor's bytes to its block (`blk.N.*`) or to the rest. Block numbers at or past `max_blocks`
    /// (the tensor count, itself bounded by the file's size) count as the rest, so a forged name cannot make
    /// the list huge.
    fn add_tensor(&mut self, name: &str, bytes: u64, max_blocks: usize) {
        let block = name.strip_prefix("blk.").and_then(|rest| rest.split('.').next()?.parse::<usize>().ok());
        match block {
            Some(n) if n < max_blocks => {
                if self.layer_bytes.len() <= n {
                    self.layer_bytes.resize(n + 1, 0);
                }
                self.layer_bytes[n] += bytes;
            }
            _ => self.other_bytes += bytes,
        }
    }

    /// The KV cache for `tokens` tokens over all layers.
    pub fn kv_bytes(&self, tokens: u64) -> u64 {
        self.kv_bytes_per_token_layer * self.layer_bytes.len() as u64 * tokens
    }

    /// The same model with a KV cache `ratio` times the size of an f16 one (a q8_0 cache: about 0.53).
    pub fn with_kv_ratio(&self, ratio: f64) -> ModelLayout {
        let per_token_layer = (self.kv_bytes_per_token_layer as f64 * ratio).ceil() as u64;
        ModelLayout { kv_bytes_per_token_layer: per_token_layer, ..self.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("this is not a GGUF file (it does not start with \"GGUF\")")]
    NotGguf,
    #[error("GGUF version {0} is not supported (stove reads versions 2 and 3)")]
    Version(u32),
    #[error("the GGUF header is cut short or corrupt: {0}")]
    Corrupt(String),
    #[error("the GGUF header has no general.architecture key")]
    NoArchitecture,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the header of the GGUF that occupies `len` bytes from `offset` in `file`.
pub fn read_info<R: Read + Seek>(file: R, offset: u64, len: u64) -> Result<GgufInfo, GgufError> {
    let mut reader = HeaderReader::new(file, offset, len)?;
    let mut magic = [0u8; 4];
    reader.exact(&mut magic).map_err(|_| GgufError::NotGguf)?;
    if &magic != b"GGUF" {
        return Err(GgufError::NotGguf);
    }
    let version = reader.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
    }
    let n_tensors = reader.u64()?;
    let n_kv = reader.u64()?;
    // Each key-value pair takes at least 12 bytes, each tensor info at least 24: bound the counts by the file.
    reader.check_count(n_kv, 12, "metadata keys")?;
    reader.check_count(n_tensors, 24, "tensors")?;

    let mut values = HashMap::new();
    for _ in 0..n_kv {
        let key = reader.string(MAX_KEPT_STRING)?.unwrap_or_default();
        let value_type = reader.u32()?;
        if let Some(value) = reader.value(value_type)? {
            values.insert(key, value);
        }
    }

    let alignment = match values.get("general.alignment") {
        Some(Value::Uint(a)) if *a > 0 && a.is_power_of_two() && *a <= MAX_ALIGNMENT => *a,
        Some(_) => return Err(GgufError::Corrupt("general.alignment is not a power of two up to 1 MiB".into())),
        None => 32,
    };
    let mut parameters: u64 = 0;
    let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
    for index in 0..n_tensors {
        let name =
            reader.string(MAX_TENSOR_NAME)?.ok_or_else(|| corrupt(format!("tensor {index} has a name over 64 KiB")))?;
        let n_dims = reader.u32()?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(corrupt(format!("tensor {name:?} has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")));
        }
        let mut dims = [1u64; MAX_DIMS as usize];
        let mut elements: u64 = 1;
        for dim in dims.iter_mut().take(n_dims as usize) {
            *dim = reader.u64()?;
            elements = elements
                .checked_mul(*dim)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| corrupt(format!("tensor {name:?} has more elements than ggml can count")))?;
        }
        let type_id = reader.u32()?;
        let offset = reader.u64()?;
        tensors.push(TensorSpan { name, dims, type_id, offset });
        parameters = parameters.saturating_add(elements);
    }

    let data_offset = reader.position().div_ceil(alignment) * alignment;
    if data_offset > len {
        return Err(GgufError::Corrupt(format!(
            "tensor data should start at byte {data_offset} but the file has only {len} bytes"
        )));
    }
    // What llama.cpp would otherwise trust: every tensor's bytes lie inside the file, where its type says.
    let data_len = len - data_offset;
    let mut layout = ModelLayout::default();
    for tensor in &tensors {
        let bytes = tensor.check(alignment, data_len)?;
        layout.add_tensor(&tensor.name, bytes, tensors.len());
        if tensor.name == "token_embd.weight" {
            (layout.width, layout.vocabulary) = (tensor.dims[0], tensor.dims[1]);
        }
    }

    let text = |key: &str| match values.get(key) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let architecture = text("general.architecture").ok_or(GgufError::NoArchitecture)?;
    let context_length = match values.get(&format!("{architecture}.context_length")) {
        Some(Value::Uint(n)) => Some(*n),
        Some(Value::Int(n)) if *n > 0 => Some(*n as u64),
        _ => None,
    };
    let number = |key: &str| match values.get(&format!("{architecture}.{key}")) {
        Some(Value::Uint(n)) => Some(*n),
        Some(Value::Int(n)) if *n > 0 => Some(*n as u64),
        _ => None,
    };
    // Keys and values of every KV head, 2 bytes each. Head sizes default to the embedding split over the heads;
    // models that give a per-layer head count (an array) count as having as many KV heads as query heads.
    let heads = number("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = number("attention.head_count_kv").unwrap_or(heads);
    let head_size = number("embedding_length").unwrap_or(0) / heads;
    let key_size = number("attention.key_length").unwrap_or(head_size);
    let value_size = number("attention.value_length").unwrap_or(head_size);
    layout.kv_bytes_per_token_layer = kv_heads.saturating_mul(key_size.saturating_add(value_size)).saturating_mul(2);
    let pools = number("pooling_type").is_some_and(|t| t > 0);
    let flag = |key: &str| matches!(values.get(key), Some(Value::Uint(n)) if *n != 0);
    let projector = (architecture == "clip").then(|| {
        let vision = flag("clip.has_vision_encoder");
        let audio = flag("clip.has_audio_encoder");
        // One kind for the whole file, or (models with both) one for each encoder.
        let kinds: Vec<String> = match text("clip.projector_type") {
            Some(kind) => vec![kind],
            None => [(vision, "clip.vision.projector_type"), (audio, "clip.audio.projector_type")]
                .into_iter()
                .filter(|(has, _)| *has)
                .filter_map(|(_, key)| text(key))
                .collect(),
        };
        let kind = if kinds.is_empty() { "unknown".to_string() } else { kinds.join("+") };
        ProjectorHeader { kind, vision, audio }
    });
    let quantization = match values.get("general.file_type") {
        Some(Value::Uint(t)) => file_type_name(*t),
        _ => "unknown".to_string(),
    };
    Ok(GgufInfo {
        version,
        name: text("general.name"),
        architecture,
        parameters,
        quantization,
        context_length,
        chat_template: text("tokenizer.chat_template"),
        pools,
        projector,
        data_offset,
        layout,
    })
}

/// The name llama.cpp gives a `general.file_type` (enum `llama_ftype` in llama.h).
pub fn file_type_name(file_type: u64) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        other => return format!("file type {other}"),
    };
    name.to_string()
}

const MAX_TENSOR_NAME: u64 = 64 << 10;
const MAX_ALIGNMENT: u64 = 1 << 20;

fn corrupt(reason: String) -> GgufError {
    GgufError::Corrupt(reason)
}

#[cfg(test)]
mod tests {
    use super::sample::{sample, string};
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Where tensor `b`'s type (u32) and offset (u64) sit in [`sample`].
    fn tensor_b_fields(g: &[u8]) -> usize {
        let name = string("b");
        let at = g
            .windows(name.len() + 4)
            .rposition(|w| w[..name.len()] == name[..] && w[name.len()..] == 1u32.to_le_bytes())
            .unwrap();
        at + name.len() + 4 + 8
    }

    #[test]
    fn tensors_count_to_their_block_and_forged_block_numbers_to_the_rest() {
        let mut layout = ModelLayout::default();
        layout.add_tensor("blk.1.attn_q.weight", 100, 10);
        layout.add_tensor("blk.1.ffn_up.weight", 50, 10);
        layout.add_tensor("blk.0.attn_q.weight", 100, 10);
        layout.add_tensor("blk.999999999.attn_q.weight", 7, 10);
        layout.add_tensor("token_embd.weight", 30, 10);
        assert_eq!(layout.layer_bytes, [100, 150]);
        assert_eq!((layout.other_bytes, layout.weight_bytes()), (37, 287));
    }

    #[test]
    fn reads_the_header() {
        let g = sample();
        let info = read_info(Cursor::new(&g), 0, g.len() as u64).unwrap();
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(info.quantization, "Q4_1");
        assert_eq!(info.parameters, 4 * 3 + 5);
        assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(info.data_offset % 32, 0);
        // Two F32 tensors outside any block: 48 + 20 bytes.
        assert_eq!((info.layout.layer_bytes.len(), info.layout.other_bytes), (0, 68));
    }

    #[test]
    fn reads_at_an_offset_inside_a_larger_file() {
        let mut file = vec![0xAAu8; 1000];
        let g = sample();
        file.extend(&g);
        let info = read_info(Cursor::new(&file), 1000, g.len() as u64).unwrap();
        assert_eq!(info.parameters, 17);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let g = sample();
        let header_len = read_info(Cursor::new(&g), 0, g.len() as u64).unwrap().data_offset as usize;
        for cut in 0..header_len {
            assert!(read_info(Cursor::new(&g[..cut]), 0, cut as u64).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn huge_counts_are_refused_without_allocating() {
        let mut g = b"GGUF".to_vec();
        g.extend(3u32.to_le_bytes());
        g.extend(u64::MAX.to_le_bytes());
        g.extend(u64::MAX.to_le_bytes());
        let err = read_info(Cursor::new(&g), 0, g.len() as u64).unwrap_err();
        assert!(matches!(err, GgufError::Corrupt(_)), "{err}");
    }

    #[test]
    fn tensors_that_point_outside_the_file_are_refused() {
        let g = sample();
        let fields = tensor_b_fields(&g);
        let len = g.len() as u64;
        let refused = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bad = g.clone();
            edit(&mut bad);
            read_info(Cursor::new(&bad), 0, len).unwrap_err().to_string()
        };
        // The data runs past the end, or starts misaligned, or the type is unknown to ggml.
        assert!(
            refused(&|b| b[fields + 4..fields + 12].copy_from_slice(&96u64.to_le_bytes())).contains("would end past")
        );
        assert!(refused(&|b| b[fields + 4..fields + 12].copy_from_slice(&(u64::MAX - 7).to_le_bytes()))
            .contains("not a multiple"));
        assert!(refused(&|b| b[fields..fields + 4].copy_from_slice(&4u32.to_le_bytes())).contains("does not know"));
        assert!(refused(&|b| b[fields..fields + 4].copy_from_slice(&999u32.to_le_bytes())).contains("does not know"));
        // Q4_0 needs rows of whole 32-element blocks; b has 5 elements.
        assert!(refused(&|b| b[fields..fields + 4].copy_from_slice(&2u32.to_le_bytes())).contains("whole blocks"));
        // The file cut right after the header: the tensors' data is missing.
        let header = read_info(Cursor::new(&g), 0, len).unwrap().data_offset;
        assert!(read_info(Cursor::new(&g), 0, header + 10).unwrap_err().to_string().contains("would end past"));
    }

    #[test]
    fn nested_arrays_are_refused_before_they_can_recurse() {
        // One key whose value is an array of arrays of arrays ..., 100,000 deep, in 1.2 MB.
        let mut g = b"GGUF".to_vec();
        g.extend(3u32.to_le_bytes());
        g.extend(0u64.to_le_bytes());
        g.extend(1u64.to_le_bytes());
        g.extend(string("deep"));
        g.extend(9u32.to_le_bytes());
        for _ in 0..100_000 {
            g.extend(9u32.to_le_bytes());
            g.extend(1u64.to_le_bytes());
        }
        let err = read_info(Cursor::new(&g), 0, g.len() as u64).unwrap_err();
        assert!(err.to_string().contains("only scalars and strings"), "{err}");
    }

    #[test]
    fn other_files_are_not_gguf() {
        let err = read_info(Cursor::new(b"\x7fELF...."), 0, 8).unwrap_err();
        assert!(matches!(err, GgufError::NotGguf));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Random bytes changed, random 64-bit fields forged and a random cut: every result is a header read
        /// within the file or an error, never a panic, a hang or a huge allocation.
        #[test]
        fn any_damage_to_a_header_is_read_safely_or_refused(
            bytes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            fields in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 0..3),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut g = sample();
            for (at, value) in bytes {
                let at = at.index(g.len());
                g[at] = value;
            }
            for (at, value) in fields {
                let at = at.index(g.len() - 8);
                g[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            let len = cut.index(g.len() + 1) as u64;
            if let Ok(info) = read_info(Cursor::new(&g), 0, len) {
                prop_assert!(info.data_offset <= len);
            }
        }
    }
}
