//! Speculative decoding: more than one token per decode. Before a slot's next token is decoded, a drafter
//! guesses the tokens after it: llama.cpp's n-gram drafter (`llama/speculative.rs`) from earlier in the same
//! conversation, or a small draft model with the same vocabulary, which runs the conversation in its own
//! context and guesses greedily. The guesses go into the same batch, and the slot samples at each of their
//! positions in turn, keeping guesses for as long as the sampled token is the guessed one (`slot.rs`). Every
//! kept token is one the model sampled from its own logits with the usual sampler (grammar included), so a
//! greedy answer is the same token for token with and without speculation; a wrong guess costs only its share
//! of the batch. N-grams pay off when the answer repeats its input (editing code, rewriting a paragraph); a
//! draft model on any text its guesses get right.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
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
    /// Guess with the draft model (`--draft`, or the one packed in the file).
    Draft,
    /// The best this file can do: its draft model when it has one, else n-grams.
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

/// A draft model stops guessing at a token it gives less than this probability: a guess it doubts is likely
/// wrong, and every guess costs the model a place in the batch.
const DRAFT_MIN_PROBABILITY: f32 = 0.5;

impl SpecConfig {
    /// Whether any speculation runs.
    pub fn enabled(&self) -> bool {
        self.mode != SpecMode::None && self.draft_max > 0
    }
}

/// The drafter of a running engine, shared by its slots (each is one sequence of the drafter).
pub struct Speculation<'m> {
    config: SpecConfig,
    drafter: Drafter<'m>,
}

enum Drafter<'m> {
    Ngram(NgramDrafter),
    Model(DraftModel<'m>),
}

impl<'m> Speculation<'m> {
    /// Speculation for `slots` conversations, or `None` when `config` turns it off. `draft`: the draft model
    /// and its context (one sequence per slot), when `config.mode` is `Draft`.
    pub fn new(
        config: SpecConfig,
        slots: u32,
        draft: Option<(&'m LlamaModel, LlamaContext<'m>)>,
    ) -> Result<Option<Self>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let drafter = match draft {
            Some((model, ctx)) => Drafter::Model(DraftModel::new(model, ctx, slots)),
            // llama.cpp's ngram-simple proposes nothing shorter than its match; `draft` cuts guesses to
            // --draft-max.
            None => Drafter::Ngram(
                NgramDrafter::new(slots, config.ngram, config.draft_max.max(config.ngram))
                    .map_err(|e| format!("cannot set up n-gram speculation: {e}"))?,
            ),
        };
        Ok(Some(Speculation { config, drafter }))
    }

    /// A new answer starts in `seq` after `prompt`.
    pub fn begin(&mut self, seq: i32, prompt: &[LlamaToken]) {
        if let Drafter::Ngram(ngram) = &mut self.drafter {
            ngram.begin(seq, prompt);
        }
    }

    /// Tokens guessed to follow `last` in `seq`, at most `room`; empty when there is no guess worth trying.
    pub fn draft(&mut self, seq: i32, history: &[LlamaToken], last: LlamaToken, room: usize) -> Vec<LlamaToken> {
        let most = room.min(usize::from(self.config.draft_max));
        if most == 0 || most < usize::from(self.config.draft_min) {
            return Vec::new();
        }
        let draft = match &mut self.drafter {
            Drafter::Ngram(ngram) => ngram.draft(seq, history, last, most),
            Drafter::Model(model) => model.draft(seq, history, last, most),
        };
        if draft.len() < usize::from(self.config.draft_min.max(1)) {
            return Vec::new();
        }
        draft
    }

    /// The model agreed with the first `accepted` tokens of `seq`'s last guess.
    pub fn accept(&mut self, seq: i32, accepted: usize) {
        // The draft model finds out at its next guess, from the conversation's tokens.
        if let Drafter::Ngram(ngram) = &mut self.drafter {
            ngram.accept(seq, accepted);
        }
    }
}

/// A draft model running every slot's conversation in its own context, one sequence per slot.
struct DraftModel<'m> {
    ctx: LlamaContext<'m>,
    model: &'m LlamaModel,
    batch: LlamaBatch<'static>,
    /// Tokens the batch holds at most.
    capacity: usize,
    /// The tokens each sequence of the draft context holds, in position order.
    cached: Vec<Vec<LlamaToken>>,
}

impl<'m> DraftModel<'m> {
    fn new(model: &'m LlamaModel, ctx: LlamaContext<'m>, slots: u32) -> Self {
        let capacity = ctx.n_batch() as usize;
        let batch = LlamaBatch::new(capacity, 1);
        DraftModel { ctx, model, batch, capacity, cached: vec![Vec::new(); slots as usize] }
    }

    /// Brings sequence `seq` up to `history` + `last`, then guesses greedily up to `most` tokens after them,
    /// stopping at one it doubts. Empty when the draft context fails (the answer goes on without guesses).
    fn draft(&mut self, seq: i32, history: &[LlamaToken], last: LlamaToken, most: usize) -> Vec<LlamaToken> {
        let cached = &mut self.cached[seq as usize];
        // What the draft context holds beyond the conversation (rejected guesses, an earlier request) goes.
        let keep = cached.iter().zip(history).take_while(|(a, b)| a == b).count();
        if keep < cached.len() {
            if self.ctx.kv_cache_seq_rm(seq, Some(keep as u32), None).is_err() {
                let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                cached.clear();
            }
            cached.truncate(keep);
        }
        let mut pending: Vec<LlamaToken> = history[cached.len()..].to_vec();
        pending.push(last);
        let capacity = self.capacity.max(1);
        let chunks = pending.len().div_ceil(capacity);
        for (i, chunk) in pending.chunks(capacity).enumerate() {
            if !self.decode(seq, chunk, i + 1 == chunks) {
                return Vec::new();
            }
        }
        let mut guesses = Vec::with_capacity(most);
        while guesses.len() < most {
            let logits = self.ctx.get_logits_ith(self.batch.n_tokens() - 1);
            let (best, probability) = most_likely(logits);
            let token = LlamaToken(best as i32);
            if probability < DRAFT_MIN_PROBABILITY || self.model.vocab().is_eog(token) {
                break;
            }
            guesses.push(token);
            if guesses.len() == most || !self.decode(seq, &[token], true) {
                break;
            }
        }
        guesses
    }

    /// Decodes `tokens` at the end of `seq`, with logits for the last one when `logits`.
    fn decode(&mut self, seq: i32, tokens: &[LlamaToken], logits: bool) -> bool {
        let cached = &mut self.cached[seq as usize];
        self.batch.clear();
        for (i, &token) in tokens.iter().enumerate() {
            let wants = logits && i + 1 == tokens.len();
            if self.batch.add(token, (cached.len() + i) as i32, &[seq], wants).is_err() {
                return false;
            }
        }
        if self.ctx.decode(&mut self.batch).is_err() {
            // The cache may hold part of the batch: start this sequence over at the next guess.
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            cached.clear();
            return false;
        }
        cached.extend_from_slice(tokens);
        true
    }
}

/// The most likely token in `logits` and its probability.
fn most_likely(logits: &[f32]) -> (usize, f32) {
    let (best, &max) = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("a vocabulary has tokens");
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (best, 1.0 / sum)
}
