//! The engine's worker thread: loads the model, then runs queued requests one at a time, streaming text.

use std::num::NonZeroU32;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use tokio::sync::mpsc;

use super::text::{Scan, StopMatcher, Utf8Decoder};
use super::{
    ffi, init_backend, page_in, ChatMessage, EngineConfig, EngineError, Event, Finish, FinishReason, Job, LoadState,
    Request, Runtime,
};
use crate::bundle::ModelSpan;

/// Context size when neither the command line nor the bundle sets one (capped at the trained context).
pub const DEFAULT_CONTEXT: u32 = 4096;

/// Loads the model and serves jobs until every sender is gone. Errors are load failures, for the state.
pub(super) fn run_worker(
    span: &ModelSpan,
    config: &EngineConfig,
    set_state: &dyn Fn(LoadState),
    queue: Receiver<Job>,
) -> Result<(), String> {
    let started = Instant::now();
    let backend = init_backend(config.verbose)?;
    page_in(span, &|permille| set_state(LoadState::Loading { permille }))
        .map_err(|e| format!("cannot read the model from {}: {e}", span.path.display()))?;
    let model = ffi::load_model_at(&backend, &span.path, span.offset, config.use_mmap, config.gpu_layers)
        .map_err(|e| e.to_string())?;
    set_state(LoadState::Loading { permille: 950 });

    let trained = model.n_ctx_train().max(1);
    let context_size = match config.ctx_size {
        None => DEFAULT_CONTEXT.min(trained),
        Some(0) => trained,
        Some(n) => n,
    };
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(i32::MAX);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context_size))
        .with_n_batch(config.batch_size)
        .with_n_ubatch(config.batch_size)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = model
        .new_context(&backend, params)
        .map_err(|e| format!("cannot create a context of {context_size} tokens: {e}; try a smaller --ctx-size"))?;
    let template = chat_template(&model);
    let batch = LlamaBatch::new(ctx.n_batch() as usize, 1);
    set_state(LoadState::Ready(Runtime {
        context_size: ctx.n_ctx(),
        threads: config.threads,
        mmap: config.use_mmap,
        load_seconds: started.elapsed().as_secs_f64(),
    }));

    let mut worker = Worker { model: &model, ctx, batch, template, system_prompt: config.system_prompt.clone() };
    for job in queue {
        worker.run(job);
    }
    Ok(())
}

/// The model's own template when llama.cpp knows it, else ChatML (which most small chat models use).
fn chat_template(model: &LlamaModel) -> LlamaChatTemplate {
    let probe = [LlamaChatMessage::new("user".into(), "hi".into()).expect("no NUL")];
    if let Ok(template) = model.chat_template(None) {
        if model.apply_chat_template(&template, &probe, true).is_ok() {
            return template;
        }
        eprintln!("warning: llama.cpp does not know this model's chat template; using ChatML instead");
    }
    LlamaChatTemplate::new("chatml").expect("no NUL")
}

/// Why a generation ended early.
enum Stopped {
    /// The client went away; nobody is left to tell.
    Cancelled,
    Failed(EngineError),
}

impl From<EngineError> for Stopped {
    fn from(e: EngineError) -> Self {
        Stopped::Failed(e)
    }
}

struct Worker<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// Reused for every decode, sized to the context's batch.
    batch: LlamaBatch<'static>,
    template: LlamaChatTemplate,
    system_prompt: Option<String>,
}

impl Worker<'_> {
    fn run(&mut self, job: Job) {
        let Job { request, events } = job;
        if let Err(Stopped::Failed(error)) = self.generate(&request, &events) {
            let _ = events.blocking_send(Event::Failed(error));
        }
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let system = self
            .system_prompt
            .as_ref()
            .filter(|_| messages.first().is_none_or(|m| m.role != "system"))
            .map(|content| ChatMessage { role: "system".into(), content: content.clone() });
        let chat = system
            .iter()
            .chain(messages)
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(format!("a message contains a NUL character: {e}")))?;
        self.model.apply_chat_template(&self.template, &chat, true).map_err(|e| EngineError::Template(e.to_string()))
    }

    fn generate(&mut self, request: &Request, events: &mpsc::Sender<Event>) -> Result<(), Stopped> {
        let send = |event: Event| events.blocking_send(event).map_err(|_| Stopped::Cancelled);
        let inference = |e: &dyn std::fmt::Display| Stopped::Failed(EngineError::Inference(e.to_string()));
        let vocab = self.model.vocab();

        let prompt = self.render(&request.messages)?;
        let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let context_size = self.ctx.n_ctx();
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if prompt_tokens == 0 {
            return Err(EngineError::Template("the prompt is empty".into()).into());
        }
        if prompt_tokens >= context_size {
            return Err(EngineError::PromptTooLong { prompt_tokens, context_size }.into());
        }
        send(Event::Started)?;

        let prompt_started = Instant::now();
        self.ctx.clear_kv_cache();
        let n_batch = self.ctx.n_batch() as usize;
        for (chunk_index, chunk) in tokens.chunks(n_batch).enumerate() {
            self.batch.clear();
            for (i, &token) in chunk.iter().enumerate() {
                let pos = chunk_index * n_batch + i;
                let is_last = pos + 1 == tokens.len();
                self.batch.add(token, pos as i32, &[0], is_last).map_err(|e| inference(&e))?;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| inference(&e))?;
            if events.is_closed() {
                return Err(Stopped::Cancelled);
            }
        }
        let prompt_ms = prompt_started.elapsed().as_secs_f64() * 1000.0;

        let generation_started = Instant::now();
        let max_tokens = request.max_tokens.unwrap_or(u32::MAX).min(context_size - prompt_tokens);
        let mut sampler = request.sampling.sampler();
        let mut decoder = Utf8Decoder::default();
        let mut stops = StopMatcher::new(request.stop.clone());
        let mut piece = Vec::with_capacity(32);
        let mut completion_tokens = 0u32;
        let mut hit_stop_string = false;
        let reason = loop {
            if completion_tokens == max_tokens {
                break FinishReason::Length;
            }
            // `sample` also accepts the token into the sampler chain.
            let token = sampler.sample(&self.ctx, self.batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            completion_tokens += 1;
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            match stops.push(&decoder.push(&piece)) {
                Scan::Text(text) if !text.is_empty() => send(Event::Text(text))?,
                Scan::Text(_) => {}
                Scan::Stopped(text) => {
                    hit_stop_string = true;
                    if !text.is_empty() {
                        send(Event::Text(text))?;
                    }
                    break FinishReason::Stop;
                }
            }
            if events.is_closed() {
                return Err(Stopped::Cancelled);
            }
            self.batch.clear();
            let pos = (prompt_tokens + completion_tokens - 1) as i32;
            self.batch.add(token, pos, &[0], true).map_err(|e| inference(&e))?;
            self.ctx.decode(&mut self.batch).map_err(|e| inference(&e))?;
        };
        if !hit_stop_string {
            // What was held back as a possible stop string, and any unfinished character, belong to the answer.
            let rest = stops.finish() + &decoder.finish();
            if !rest.is_empty() {
                send(Event::Text(rest))?;
            }
        }
        send(Event::Done(Finish {
            reason,
            prompt_tokens,
            completion_tokens,
            prompt_ms,
            generation_ms: generation_started.elapsed().as_secs_f64() * 1000.0,
        }))
    }
}
