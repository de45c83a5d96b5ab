//! Embedding requests, done a piece at a time between generation steps, so that a long list of long inputs
//! never holds the engine thread: chats keep getting their tokens, and a request whose client left is dropped
//! before its next piece.
//!
//! A model with its own pooling (an embedding model, often non-causal) needs a whole input in one decode, so its
//! piece is one input. A generative model's vector is the mean of its last hidden states; its inputs are decoded
//! in chunks of `CHUNK` tokens (attention is causal, so earlier chunks stay in the KV cache) and the per-token
//! states are summed here, which is what llama.cpp's mean pooling computes over a whole batch.

use std::collections::VecDeque;
use std::num::NonZeroU32;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::metrics::Metrics;
use super::{EmbedJob, Embeddings, EngineError};

/// Tokens of a generative model's input decoded per scheduler step: about a tenth of a second of CPU for a small
/// model, so generation slows while embeddings run but never waits for a whole request.
const CHUNK: usize = 64;
/// Embedding requests held in the engine at once; more wait in the engine's queue.
pub const MAX_TASKS: usize = 8;

/// A request being embedded: its inputs, the vectors made so far, and where the current input is.
struct Task {
    job: EmbedJob,
    vectors: Vec<Vec<f32>>,
    /// Tokens of the current input already decoded, and the sum of their hidden states.
    at: usize,
    sum: Vec<f32>,
}

/// The embedding work the scheduler interleaves with generation, and the context it runs in.
pub struct EmbedQueue<'m> {
    model: &'m LlamaModel,
    backend: &'m LlamaBackend,
    /// Tokens one input may hold (a conversation's context), and the threads decoding uses.
    slot_context: u32,
    threads: i32,
    /// A second context that outputs embeddings, made on the first request.
    context: Option<LlamaContext<'m>>,
    /// Whether the model pools itself (one decode per input) or its states are averaged here.
    own_pooling: bool,
    tasks: VecDeque<Task>,
    batch: Option<LlamaBatch<'static>>,
}

impl<'m> EmbedQueue<'m> {
    pub fn new(model: &'m LlamaModel, backend: &'m LlamaBackend, slot_context: u32, threads: i32) -> Self {
        EmbedQueue {
            model,
            backend,
            slot_context,
            threads,
            context: None,
            own_pooling: false,
            tasks: VecDeque::new(),
            batch: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.tasks.len() >= MAX_TASKS
    }

    pub fn push(&mut self, job: EmbedJob) {
        self.tasks.push_back(Task { job, vectors: Vec::new(), at: 0, sum: Vec::new() });
    }

    /// Does one piece of the oldest request: drops it if its client left, replies when it is complete.
    pub fn step(&mut self, metrics: &Metrics) {
        let Some(task) = self.tasks.front() else { return };
        if task.job.reply.is_closed() {
            self.tasks.pop_front();
            Metrics::add(&metrics.embeddings_cancelled, 1);
            return;
        }
        if let Err(error) = self.piece(metrics) {
            let task = self.tasks.pop_front().expect("checked above");
            let _ = task.job.reply.send(Err(error));
            return;
        }
        let task = self.tasks.front().expect("checked above");
        if task.vectors.len() == task.job.inputs.len() {
            let task = self.tasks.pop_front().expect("checked above");
            let prompt_tokens = task.job.inputs.iter().map(|t| t.len() as u32).sum();
            let _ = task.job.reply.send(Ok(Embeddings { vectors: task.vectors, prompt_tokens }));
        }
    }

    fn piece(&mut self, metrics: &Metrics) -> Result<(), EngineError> {
        let (model, slot_context, threads) = (self.model, self.slot_context, self.threads);
        let inference = |e: &dyn std::fmt::Display| EngineError::Inference(e.to_string());
        if self.context.is_none() {
            // Embedding models name their pooling; a generative model's hidden states are averaged here.
            let arch = model.meta_val_str("general.architecture").unwrap_or_default();
            self.own_pooling = model.meta_val_str(&format!("{arch}.pooling_type")).is_ok();
            let pooling = if self.own_pooling { LlamaPoolingType::Unspecified } else { LlamaPoolingType::None };
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(slot_context))
                // A whole input is one batch for a model that pools itself (non-causal models need every token).
                .with_n_batch(slot_context)
                .with_n_ubatch(slot_context)
                .with_n_threads(threads)
                .with_n_threads_batch(threads)
                .with_embeddings(true)
                .with_pooling_type(pooling);
            self.context = Some(model.new_context(self.backend, params).map_err(|e| inference(&e))?);
            self.batch = Some(LlamaBatch::new(slot_context as usize, 1));
        }
        let context = self.context.as_mut().expect("made above");
        let batch = self.batch.as_mut().expect("made with the context");
        let task = self.tasks.front_mut().expect("the caller checked");
        let input = &task.job.inputs[task.vectors.len()];
        if task.at == 0 {
            context.clear_kv_cache();
        }
        let end = if self.own_pooling { input.len() } else { (task.at + CHUNK).min(input.len()) };
        batch.clear();
        for (pos, &token) in input.iter().enumerate().take(end).skip(task.at) {
            batch.add(token, pos as i32, &[0], true).map_err(|e| inference(&e))?;
        }
        context.decode(batch).map_err(|e| inference(&e))?;
        Metrics::add(&metrics.embedded_tokens, (end - task.at) as u64);
        let vector = if self.own_pooling {
            Some(context.embeddings_seq_ith(0).map_err(|e| inference(&e))?.to_vec())
        } else {
            for i in 0..(end - task.at) {
                let state = context.embeddings_ith(i as i32).map_err(|e| inference(&e))?;
                if task.sum.is_empty() {
                    task.sum = vec![0.0; state.len()];
                }
                task.sum.iter_mut().zip(state).for_each(|(sum, x)| *sum += x);
            }
            task.at = end;
            (end == input.len()).then(|| std::mem::take(&mut task.sum))
        };
        if let Some(raw) = vector {
            // L2-normalized; the mean's 1/n disappears in the normalization.
            let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            task.vectors.push(raw.iter().map(|x| x / norm).collect());
            task.at = 0;
            Metrics::add(&metrics.embedded_inputs, 1);
        }
        Ok(())
    }
}

/// The inputs of one request, checked against the budget a request may spend: `budget` tokens in all.
pub fn check_budget(inputs: &[Vec<LlamaToken>], budget: u64) -> Result<(), EngineError> {
    let tokens: u64 = inputs.iter().map(|t| t.len() as u64).sum();
    if tokens > budget {
        return Err(EngineError::TooMuchToEmbed { tokens, budget });
    }
    Ok(())
}
