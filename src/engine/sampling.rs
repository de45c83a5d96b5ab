//! Sampling settings and the llama.cpp sampler chain built from them.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;

/// The sampling settings a request may set; defaults are llama-server's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token every time (deterministic).
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    /// `None` draws a fresh seed for each request.
    pub seed: Option<u32>,
    /// Added to these tokens' logits before sampling (OpenAI's `logit_bias`; -100 bans a token).
    pub logit_bias: Vec<(i32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, seed: None, logit_bias: Vec::new() }
    }
}

/// llama.cpp draws a random seed when given this one (`LLAMA_DEFAULT_SEED`).
const RANDOM_SEED: u32 = 0xFFFF_FFFF;

impl SamplingParams {
    /// The chain in llama.cpp's default order: the grammar (which rules out tokens), the logit biases,
    /// truncations, then temperature, then the draw. `n_vocab` is the model's vocabulary size.
    pub fn sampler(&self, n_vocab: i32, grammar: Option<LlamaSampler>) -> LlamaSampler {
        let mut chain = Vec::with_capacity(7);
        chain.extend(grammar);
        if !self.logit_bias.is_empty() {
            let biases: Vec<LlamaLogitBias> =
                self.logit_bias.iter().map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token), bias)).collect();
            chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
        }
        if self.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
            return LlamaSampler::chain_simple(chain);
        }
        if self.top_k > 0 {
            chain.push(LlamaSampler::top_k(self.top_k));
        }
        if self.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.top_p, 1));
        }
        if self.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(self.min_p, 1));
        }
        chain.push(LlamaSampler::temp(self.temperature));
        chain.push(LlamaSampler::dist(self.seed.unwrap_or(RANDOM_SEED)));
        LlamaSampler::chain_simple(chain)
    }
}
