//! The KV cache's number format (`--cache-type-k`, `--cache-type-v`) and flash attention (`--flash-attn`), as
//! llama-server names them. A quantized cache holds more context in the same memory (q8_0 about twice f16's, at
//! a small cost in precision); llama.cpp stores a quantized value cache only with flash attention.

use llama_cpp_2::context::params::KvCacheType;
use serde::Serialize;

/// How each cached key or value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum CacheType {
    /// 16-bit floats: llama.cpp's default.
    #[default]
    F16,
    Bf16,
    /// 8 bits and a scale per 32 values: half of f16's memory, nearly the same answers.
    Q8_0,
    Q5_1,
    Q5_0,
    Q4_1,
    /// 4 bits and a scale per 32 values: under a third of f16's memory.
    Q4_0,
}

impl CacheType {
    /// Bits one cached value takes, its block's scale (and offset) included: ggml's block sizes.
    pub fn bits(self) -> f64 {
        match self {
            CacheType::F16 | CacheType::Bf16 => 16.0,
            CacheType::Q8_0 => 8.5,
            CacheType::Q5_1 => 6.0,
            CacheType::Q5_0 => 5.5,
            CacheType::Q4_1 => 5.0,
            CacheType::Q4_0 => 4.5,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, CacheType::F16 | CacheType::Bf16)
    }

    pub(super) fn llama(self) -> KvCacheType {
        match self {
            CacheType::F16 => KvCacheType::F16,
            CacheType::Bf16 => KvCacheType::BF16,
            CacheType::Q8_0 => KvCacheType::Q8_0,
            CacheType::Q5_1 => KvCacheType::Q5_1,
            CacheType::Q5_0 => KvCacheType::Q5_0,
            CacheType::Q4_1 => KvCacheType::Q4_1,
            CacheType::Q4_0 => KvCacheType::Q4_0,
        }
    }
}

/// `--flash-attn`: llama.cpp's fused attention, which saves memory and time where the device has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttention {
    /// Where the model and device support it (llama.cpp decides when the context is made).
    #[default]
    Auto,
    On,
    Off,
}

impl FlashAttention {
    pub(super) fn llama(self) -> llama_cpp_sys_2::llama_flash_attn_type {
        match self {
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// The KV cache a run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct KvCache {
    pub type_k: CacheType,
    pub type_v: CacheType,
    pub flash_attn: FlashAttention,
}

impl KvCache {
    /// The cache's size against an f16 one (1.0 for f16). Keys and values are taken as equally large, as
    /// they are in the attention of nearly every GGUF model.
    pub fn size_ratio(&self) -> f64 {
        (self.type_k.bits() + self.type_v.bits()) / 32.0
    }
}
