//! Speculative decoding: more than one token per decode when the answer repeats the conversation. Before a
//! slot's next token is decoded, llama.cpp's n-gram drafter (`llama/speculative.rs`) guesses the tokens after
//! it from earlier in the same conversation; the guesses go into the same batch, and the slot samples at each
//! of their positions in turn, keeping guesses for as long as the sampled token is the guessed one
//! (`slot.rs`). Every kept token is one the model sampled from its own logits with the usual sampler (grammar
//! included), so a greedy answer is the same token for token with and without speculation; a wrong guess
//! costs only its share of the batch. Editing code, rewriting a paragraph or quoting a document gain most.

use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use crate::llama::speculative::NgramDrafter;

/// `--spec`: which speculation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpecMode {
    /// Decode one token at a time.
    None,
    /// Guess from the conversation's own earlier tokens (no second model).
    Ngram,
    /// The best this file can do: n-gram speculation.
    #[default]
    Auto,
}

/// How speculation is set up (`--spec`, `--draft-max`, `--draft-min`, `--spec-ngram`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpecConfig {
    pub mode: SpecMode,
    /// Most tokens guessed at once.
    pub draft_max: u16,
    /// Guesses shorter than this are not tried.
    pub draft_min: u16,
    /// How many of the latest tokens must repeat earlier in the conversation for a guess.
    pub ngram: u16,
}

/// Default `--draft-max`: on a CPU a batch of 16 tokens costs a few single-token decodes, so longer guesses
/// rarely pay (`scripts/bench` measures it).
pub const DEFAULT_DRAFT_MAX: u16 = 16;
/// Default `--spec-ngram`: shorter matches guess more often and more often wrongly.
pub const DEFAULT_NGRAM: u16 = 12;

impl SpecConfig {
    /// Whether any speculation runs.
    pub fn enabled(&self) -> bool {
        self.mode != SpecMode::None && self.draft_max > 0
    }
}

/// The drafter of a running engine, shared by its slots (each is one sequence of the drafter).
pub struct Speculation {
    config: SpecConfig,
    drafter: NgramDrafter,
}

impl Speculation {
    /// Speculation for `slots` conversations, or `None` when `config` turns it off.
    pub fn new(config: SpecConfig, slots: u32) -> Result<Option<Self>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        // llama.cpp's ngram-simple proposes nothing shorter than its match; `draft` cuts guesses to --draft-max.
        let drafter = NgramDrafter::new(slots, config.ngram, config.draft_max.max(config.ngram))
            .map_err(|e| format!("cannot set up n-gram speculation: {e}"))?;
        Ok(Some(Speculation { config, drafter }))
    }

    /// A new answer starts in `seq` after `prompt`.
    pub fn begin(&mut self, seq: i32, prompt: &[LlamaToken]) {
        self.drafter.begin(seq, prompt);
    }

    /// Tokens guessed to follow `last` in `seq`, at most `room`; empty when there is no guess worth trying.
    pub fn draft(&mut self, seq: i32, history: &[LlamaToken], last: LlamaToken, room: usize) -> Vec<LlamaToken> {
        let most = room.min(usize::from(self.config.draft_max));
        if most == 0 || most < usize::from(self.config.draft_min) {
            return Vec::new();
        }
        let draft = self.drafter.draft(seq, history, last, most);
        if draft.len() < usize::from(self.config.draft_min.max(1)) {
            return Vec::new();
        }
        draft
    }

    /// The model agreed with the first `accepted` tokens of `seq`'s last guess.
    pub fn accept(&mut self, seq: i32, accepted: usize) {
        self.drafter.accept(seq, accepted);
    }
}
