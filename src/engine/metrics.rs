//! Counters the engine keeps for `/metrics`: what was asked, what was done, and how busy the slots are.
//! Plain atomics; the server formats them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests waiting for a free slot.
    pub waiting: AtomicU64,
    /// Slots generating right now (how many there are is in the runtime).
    pub busy_slots: AtomicU64,
    /// Generations finished (any reason) and cancelled by their client.
    pub finished: AtomicU64,
    pub cancelled: AtomicU64,
    /// Prompt tokens asked for, and the part of them found in a slot's KV cache.
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Microseconds spent reading prompts and generating, summed over requests.
    pub prompt_micros: AtomicU64,
    pub generation_micros: AtomicU64,
    /// Tokens speculation guessed and decoded, and those the model agreed with (each saved a decode).
    pub drafted_tokens: AtomicU64,
    pub accepted_tokens: AtomicU64,
    /// llama.cpp decode calls and tokens, and the time they took: one call serves every busy slot.
    pub decode_calls: AtomicU64,
    pub decode_tokens: AtomicU64,
    pub decode_micros: AtomicU64,
    /// Embedding inputs done, the tokens they took, and embedding requests dropped because their client left.
    pub embedded_inputs: AtomicU64,
    pub embedded_tokens: AtomicU64,
    pub embeddings_cancelled: AtomicU64,
}

impl Metrics {
    pub(super) fn queued(&self) {
        self.waiting.fetch_add(1, Relaxed);
    }

    pub(super) fn dequeued(&self) {
        self.waiting.fetch_sub(1, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
