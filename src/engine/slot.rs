//! One slot: a sequence in the shared KV cache, the tokens it holds, and the generation running in it.
//!
//! A slot keeps its tokens after a request ends, so the next request that starts with the same tokens (the
//! follow-up turn of a conversation) only decodes what is new.

use std::collections::HashSet;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;

use super::media::MediaSpan;
use super::metrics::Metrics;
use super::prompt::Prepared;
use super::speculation::Speculation;
use super::text::{Scan, StopMatcher, Utf8Decoder};
use super::{EngineError, Event, Finish, FinishReason, Job, TokenChoice, TokenLogprob};
use crate::llama::vision::Projector;

pub struct Slot {
    /// The sequence id of this slot in the context.
    pub seq: i32,
    /// The tokens whose keys and values the sequence holds, in position order.
    pub cached: Vec<LlamaToken>,
    pub generation: Option<Generation>,
    /// When the slot was last given a request (a step count), to reuse the longest idle one first.
    pub last_used: u64,
}

/// A request running in a slot.
pub struct Generation {
    events: UnboundedSender<Event>,
    /// Prompt tokens not yet decoded.
    pending: Vec<LlamaToken>,
    /// Pictures and sounds in `pending` (their places in the prompt), decoded by the projector when the prompt reaches
    /// them; `media_due` once it has.
    media: Vec<MediaSpan>,
    media_due: bool,
    /// Whether the prompt has pictures (decoded now or kept from an earlier turn).
    has_media: bool,
    prompt_tokens: u32,
    cached_tokens: u32,
    sampler: LlamaSampler,
    decoder: Utf8Decoder,
    stops: StopMatcher,
    /// Special tokens whose text is part of the answer's format (a tool call's `<tool_call>`).
    keep_special: HashSet<LlamaToken>,
    /// The stop string that ended the answer.
    stopped_by: Option<String>,
    logprobs: Option<u8>,
    /// Log-probabilities of tokens whose text is still held back (a possible stop string, a split character).
    held_logprobs: Vec<TokenLogprob>,
    completion_tokens: u32,
    max_tokens: u32,
    started: Instant,
    prompt_ms: Option<f64>,
    /// The token sampled last, decoded at the next step.
    next: Option<LlamaToken>,
    /// Tokens guessed to follow `next`, decoded with it (`speculation.rs`).
    draft: Vec<LlamaToken>,
    /// Guessed tokens decoded, and those the model agreed with.
    drafted: u32,
    accepted: u32,
    /// Where this slot's logits are in the batch being decoded (then those of each guessed token follow).
    logits_at: Option<i32>,
    /// Whether this slot has tokens in the batch being decoded.
    in_batch: bool,
}

/// What a slot does after a step.
pub enum Outcome {
    Continue,
    Finished,
    /// The client is gone.
    Cancelled,
}

impl Slot {
    pub fn new(seq: i32) -> Self {
        Slot { seq, cached: Vec::new(), generation: None, last_used: 0 }
    }

    pub fn is_busy(&self) -> bool {
        self.generation.is_some()
    }

    /// How many of `tokens` this slot already holds.
    pub fn common_prefix(&self, tokens: &[LlamaToken]) -> usize {
        self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count()
    }

    /// Starts `job` here, keeping the cache of the prompt's first tokens when this slot holds them.
    pub fn start(
        &mut self,
        job: Job,
        model: &LlamaModel,
        ctx: &mut LlamaContext,
        context_size: u32,
        speculation: Option<&mut Speculation>,
    ) {
        let Job { request, prepared, events } = job;
        let Prepared { tokens, grammar, stops, keep_special, mut media, .. } = prepared;
        // At least the prompt's last token is decoded again: its logits give the first answer token.
        let mut keep = self.common_prefix(&tokens).min(tokens.len() - 1);
        // A picture or sound is decoded whole: a cache that ends inside one keeps what comes before it.
        if let Some(span) = media.iter().find(|s| s.at < keep && keep < s.at + s.len) {
            keep = span.at;
        }
        if ctx.kv_cache_seq_rm(self.seq, Some(keep as u32), None).is_err() {
            // Some models (recurrent ones) cannot drop the end of a sequence; start it over.
            let _ = ctx.clear_kv_cache_seq(Some(self.seq as u32), None, None);
            keep = 0;
        }
        self.cached.truncate(keep);
        let has_media = !media.is_empty();
        media.retain(|span| span.at >= keep);

        // Guesses come from token ids, which stand-ins are not: no speculation with pictures or sounds.
        if let Some(speculation) = speculation.filter(|_| !has_media) {
            speculation.begin(self.seq, &tokens);
        }
        let sampler = request.sampling.sampler(model.n_vocab(), grammar);
        let prompt_tokens = tokens.len() as u32;
        let room = context_size - prompt_tokens;
        self.generation = Some(Generation {
            events,
            pending: tokens[keep..].to_vec(),
            media,
            media_due: false,
            has_media,
            prompt_tokens,
            cached_tokens: keep as u32,
            sampler,
            decoder: Utf8Decoder::default(),
            stops: StopMatcher::new(stops),
            keep_special,
            stopped_by: None,
            logprobs: request.logprobs,
            held_logprobs: Vec::new(),
            completion_tokens: 0,
            max_tokens: request.max_tokens.unwrap_or(room).min(room),
            started: Instant::now(),
            prompt_ms: None,
            next: None,
            draft: Vec::new(),
            drafted: 0,
            accepted: 0,
            logits_at: None,
            in_batch: false,
        });
    }

    /// Adds this slot's sampled token to the batch (with the tokens `speculation` guesses follow it), or as much
    /// of its prompt as `room` allows.
    pub fn add_to_batch(
        &mut self,
        batch: &mut LlamaBatch,
        room: usize,
        context_size: u32,
        speculation: Option<&mut Speculation>,
    ) -> Result<(), EngineError> {
        let Some(generation) = &mut self.generation else { return Ok(()) };
        let add_error = |e: llama_cpp_2::llama_batch::BatchAddError| EngineError::Inference(e.to_string());
        let speculation = speculation.filter(|_| !generation.has_media);
        if let Some(token) = generation.next.take() {
            // Guesses fit in the batch, in the conversation's context, and in what the answer may still take.
            let left = generation.max_tokens.saturating_sub(generation.completion_tokens + 1);
            let fits = (context_size as usize).saturating_sub(self.cached.len() + 1);
            let most = room.saturating_sub(1).min(fits).min(left as usize);
            generation.draft = match speculation {
                Some(speculation) if most > 0 => speculation.draft(self.seq, &self.cached, token, most),
                _ => Vec::new(),
            };
            batch.add(token, self.cached.len() as i32, &[self.seq], true).map_err(add_error)?;
            self.cached.push(token);
            generation.logits_at = Some(batch.n_tokens() - 1);
            for &guess in &generation.draft {
                batch.add(guess, self.cached.len() as i32, &[self.seq], true).map_err(add_error)?;
                self.cached.push(guess);
            }
            generation.in_batch = true;
            return Ok(());
        }
        let mut take = generation.pending.len().min(room);
        // The prompt's text goes in the batch up to its next picture or sound, which the projector decodes.
        if let Some(span) = generation.media.first() {
            if span.at == self.cached.len() {
                generation.media_due = true;
                return Ok(());
            }
            take = take.min(span.at - self.cached.len());
        }
        if take == 0 {
            return Ok(());
        }
        let last_of_prompt = take == generation.pending.len();
        for (i, token) in generation.pending.drain(..take).enumerate() {
            let wants_logits = last_of_prompt && i + 1 == take;
            batch.add(token, self.cached.len() as i32, &[self.seq], wants_logits).map_err(add_error)?;
            self.cached.push(token);
        }
        if last_of_prompt {
            generation.logits_at = Some(batch.n_tokens() - 1);
        }
        generation.in_batch = true;
        Ok(())
    }

    /// Decodes the picture or sound this slot's prompt has reached into its sequence (the projector runs its own
    /// decode, beside the shared batch's).
    pub fn decode_media(&mut self, ctx: &mut LlamaContext, projector: &Projector) -> Result<(), EngineError> {
        let Some(generation) = &mut self.generation else { return Ok(()) };
        if !std::mem::take(&mut generation.media_due) {
            return Ok(());
        }
        let span = generation.media.remove(0);
        let n_batch = i32::try_from(ctx.n_batch()).unwrap_or(i32::MAX);
        projector.decode(&span.chunks, ctx, self.cached.len(), self.seq, n_batch).map_err(EngineError::Inference)?;
        self.cached.extend(generation.pending.drain(..span.len));
        Ok(())
    }

    pub fn media_due(&self) -> bool {
        self.generation.as_ref().is_some_and(|g| g.media_due)
    }

    /// Forgets the previous step's place in the batch.
    pub fn begin_step(&mut self) {
        if let Some(generation) = &mut self.generation {
            generation.logits_at = None;
            generation.in_batch = false;
        }
    }

    /// Whether this slot has sampled a token that waits to be decoded (rather than prompt tokens).
    pub fn is_generating(&self) -> bool {
        self.generation.as_ref().is_some_and(|g| g.next.is_some())
    }

    pub fn in_batch(&self) -> bool {
        self.generation.as_ref().is_some_and(|g| g.in_batch)
    }

    /// The client's receiver is gone: nobody reads the answer.
    pub fn is_abandoned(&self) -> bool {
        self.generation.as_ref().is_some_and(|g| g.events.is_closed())
    }

    /// After a decode: samples the next token where this slot's logits are and sends its text. With guessed
    /// tokens in the batch it goes on sampling at each guess's position for as long as the sampled token is the
    /// guess, then drops the guesses it did not reach from the cache.
    pub fn after_decode(
        &mut self,
        model: &LlamaModel,
        ctx: &mut LlamaContext,
        context_size: u32,
        metrics: &Metrics,
        speculation: Option<&mut Speculation>,
    ) -> Outcome {
        let Some(generation) = &mut self.generation else { return Outcome::Continue };
        let Some(at) = generation.logits_at.take() else { return Outcome::Continue };
        if generation.prompt_ms.is_none() {
            generation.prompt_ms = Some(generation.started.elapsed().as_secs_f64() * 1000.0);
            generation.started = Instant::now();
        }
        let draft = std::mem::take(&mut generation.draft);
        generation.drafted += draft.len() as u32;
        // The cache holds the decoded token and every guess after it.
        let decoded = self.cached.len() - draft.len();
        let mut accepted = 0;
        let outcome = loop {
            let outcome = self.take_token(model, ctx, at + accepted as i32, decoded + accepted, context_size, metrics);
            let Some(generation) = self.generation.as_mut() else { break outcome };
            if !matches!(outcome, Outcome::Continue)
                || accepted == draft.len()
                || generation.next != Some(draft[accepted])
            {
                break outcome;
            }
            // The sampled token is the guess, which the cache already holds: its logits give the next one.
            generation.accepted += 1;
            accepted += 1;
        };
        if !draft.is_empty() {
            let keep = decoded + accepted;
            self.cached.truncate(keep);
            // Speculation runs only on models whose cache can drop its end (worker.rs checks).
            let _ = ctx.kv_cache_seq_rm(self.seq, Some(keep as u32), None);
            if let Some(speculation) = speculation {
                speculation.accept(self.seq, accepted);
            }
        }
        outcome
    }

    /// Samples a token from the logits at `at` (accepting it into the sampler and its grammar), sends its text,
    /// and either ends the answer or makes it the next token to decode. `held`: the tokens the cache holds
    /// before it.
    fn take_token(
        &mut self,
        model: &LlamaModel,
        ctx: &LlamaContext,
        at: i32,
        held: usize,
        context_size: u32,
        metrics: &Metrics,
    ) -> Outcome {
        let generation = self.generation.as_mut().expect("running");
        let vocab = model.vocab();
        let token = generation.sampler.sample(ctx, at);
        if vocab.is_eog(token) {
            return self.finish(FinishReason::Stop, metrics);
        }
        generation.completion_tokens += 1;
        if let Some(top) = generation.logprobs {
            generation.held_logprobs.push(token_logprob(model, ctx.get_logits_ith(at), token, top));
        }
        let mut piece = Vec::with_capacity(32);
        vocab.token_to_piece_into(token, &mut piece, generation.keep_special.contains(&token), None);
        let text = generation.decoder.push(&piece);
        match generation.stops.push(&text) {
            Scan::Text(text) => {
                if !generation.send_text(text) {
                    return Outcome::Cancelled;
                }
            }
            Scan::Stopped { text, stop } => {
                if !generation.send_text(text) {
                    return Outcome::Cancelled;
                }
                generation.stopped_by = Some(stop);
                return self.finish(FinishReason::Stop, metrics);
            }
        }
        // The token can only be decoded while the conversation's context has room for it.
        if generation.completion_tokens >= generation.max_tokens || held as u32 >= context_size {
            // What was held back as a possible stop string, and any unfinished character, belong to the answer.
            let rest = generation.stops.finish() + &generation.decoder.finish();
            if !generation.send_text(rest) {
                return Outcome::Cancelled;
            }
            return self.finish(FinishReason::Length, metrics);
        }
        generation.next = Some(token);
        Outcome::Continue
    }

    fn finish(&mut self, reason: FinishReason, metrics: &Metrics) -> Outcome {
        let mut generation = self.generation.take().expect("running");
        if reason == FinishReason::Stop {
            let rest = generation.stops.finish() + &generation.decoder.finish();
            generation.send_text(rest);
        }
        let finish = Finish {
            reason,
            prompt_tokens: generation.prompt_tokens,
            cached_tokens: generation.cached_tokens,
            completion_tokens: generation.completion_tokens,
            prompt_ms: generation.prompt_ms.unwrap_or_default(),
            generation_ms: generation.started.elapsed().as_secs_f64() * 1000.0,
            stop_sequence: generation.stopped_by.take(),
            drafted_tokens: generation.drafted,
            accepted_tokens: generation.accepted,
        };
        Metrics::add(&metrics.finished, 1);
        Metrics::add(&metrics.prompt_tokens, u64::from(finish.prompt_tokens));
        Metrics::add(&metrics.cached_prompt_tokens, u64::from(finish.cached_tokens));
        Metrics::add(&metrics.completion_tokens, u64::from(finish.completion_tokens));
        Metrics::add(&metrics.prompt_micros, (finish.prompt_ms * 1000.0) as u64);
        Metrics::add(&metrics.generation_micros, (finish.generation_ms * 1000.0) as u64);
        Metrics::add(&metrics.drafted_tokens, u64::from(finish.drafted_tokens));
        Metrics::add(&metrics.accepted_tokens, u64::from(finish.accepted_tokens));
        let _ = generation.events.send(Event::Done(finish));
        Outcome::Finished
    }

    /// Ends the running request with `error`; the cache may hold tokens that were never decoded, so it goes.
    pub fn fail(&mut self, error: EngineError, ctx: &mut LlamaContext) {
        if let Some(generation) = self.generation.take() {
            let _ = generation.events.send(Event::Failed(error));
        }
        self.forget(ctx);
    }

    /// Frees the slot of a request whose client left; what was decoded stays cached.
    pub fn cancel(&mut self, metrics: &Metrics) {
        // A prompt cut short leaves its decoded part in the cache, which `cached` matches, so it stays.
        if self.generation.take().is_some() {
            Metrics::add(&metrics.cancelled, 1);
        }
    }

    fn forget(&mut self, ctx: &mut LlamaContext) {
        let _ = ctx.clear_kv_cache_seq(Some(self.seq as u32), None, None);
        self.cached.clear();
    }
}

impl Generation {
    /// Sends text (with the log-probabilities of its tokens); false when the client is gone.
    fn send_text(&mut self, text: String) -> bool {
        if text.is_empty() {
            return !self.events.is_closed();
        }
        let logprobs = std::mem::take(&mut self.held_logprobs);
        self.events.send(Event::Text { text, logprobs }).is_ok()
    }
}

/// The log-probability of `chosen` and the `top` most likely tokens, from one position's raw logits.
fn token_logprob(model: &LlamaModel, logits: &[f32], chosen: LlamaToken, top: u8) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_total = f64::from(max) + sum.ln();
    let choice = |token: LlamaToken| {
        let mut bytes = Vec::new();
        model.vocab().token_to_piece_into(token, &mut bytes, false, None);
        let logprob = (f64::from(logits[token.0 as usize]) - log_total) as f32;
        TokenChoice { text: String::from_utf8_lossy(&bytes).into_owned(), bytes, logprob }
    };
    let mut best: Vec<usize> = Vec::with_capacity(usize::from(top) + 1);
    if top > 0 {
        for (i, &logit) in logits.iter().enumerate() {
            if best.len() < usize::from(top) || logit > logits[*best.last().expect("full")] {
                let at = best.partition_point(|&j| logits[j] >= logit);
                best.insert(at, i);
                best.truncate(usize::from(top));
            }
        }
    }
    TokenLogprob { chosen: choice(chosen), top: best.into_iter().map(|i| choice(LlamaToken(i as i32))).collect() }
}
