//! The engine's worker thread: loads the model, then runs the slots. Each step admits waiting requests into
//! free slots, does a piece of any embedding request (`embed.rs`), drops the ones whose client left, decodes one
//! batch holding every busy slot's next token (and as much waiting prompt as fits), and samples each slot's
//! next token from it.

use std::num::NonZeroU32;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use super::embed::EmbedQueue;
use super::metrics::Metrics;
use super::prompt::{Prompter, Template};
use super::slot::{Outcome, Slot};
use super::speculation::{SpecMode, Speculation};
use super::{
    init_backend, page_in, EmbeddingModel, EngineConfig, EngineError, LoadState, ProjectorInfo, Runtime, Status, Work,
};
use crate::bundle::ModelSpan;
use crate::gguf::ModelLayout;
use crate::hardware;
use crate::llama::vision::Projector;

/// Context per conversation when neither the command line nor the bundle sets one (capped at the trained
/// context).
pub const DEFAULT_CONTEXT: u32 = 4096;
/// Conversations decoded together by default, when memory allows (llama-server's default too).
pub const DEFAULT_PARALLEL: u32 = 4;

pub(super) struct Worker {
    pub span: ModelSpan,
    /// From the GGUF header `Engine::start` read: what the context and GPU plan are sized from.
    pub layout: ModelLayout,
    pub trained_context: Option<u64>,
    pub config: EngineConfig,
    pub status: Arc<Status>,
    pub prompter: Arc<OnceLock<Prompter>>,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub fn run(self, queue: Receiver<Work>) {
        match self.serve(queue) {
            Ok(Ended::Closed) => {}
            Ok(Ended::Unusable(message)) => self.status.set(LoadState::Unusable(message)),
            Err(message) => self.status.set(LoadState::Failed(message)),
        }
    }

    /// Loads the model and serves jobs until every sender is gone. Errors are load failures, for the state.
    fn serve(&self, queue: Receiver<Work>) -> Result<Ended, String> {
        let (span, config) = (&self.span, &self.config);
        let started = Instant::now();
        let backend = init_backend()?;
        page_in(span, &|permille| self.status.set(LoadState::Loading { permille }))
            .map_err(|e| format!("cannot read the model from {}: {e}", span.path.display()))?;

        // The context and the number of conversations come first: the KV cache they need decides how many
        // layers fit on a GPU.
        let trained = self.trained_context.unwrap_or(u64::from(DEFAULT_CONTEXT));
        let trained = u32::try_from(trained).unwrap_or(u32::MAX).max(1);
        let context_size = match config.ctx_size {
            None => DEFAULT_CONTEXT.min(trained),
            Some(0) => trained,
            Some(n) => n,
        };
        // The plan counts the cache at the size its number format gives it.
        let layout = self.layout.with_kv_ratio(config.kv_cache.size_ratio());
        let parallel = config.parallel.unwrap_or_else(|| default_parallel(&layout, context_size)).max(1);
        let gpus: Vec<_> = hardware::devices().into_iter().filter(hardware::Device::is_gpu).collect();
        let projector_bytes = config.mmproj.as_ref().map_or(0, |p| p.span.len);
        let offload = hardware::offload::plan(
            &layout,
            &gpus,
            u64::from(parallel),
            u64::from(context_size),
            config.gpu_layers,
            projector_bytes,
        );
        let model =
            crate::llama::load_model_at(&backend, &span.path, span.offset, config.use_mmap, offload.n_gpu_layers())
                .map_err(|e| e.to_string())?;
        let model = Arc::new(model);
        self.status.set(LoadState::Loading { permille: 950 });

        let threads = i32::try_from(config.threads).unwrap_or(i32::MAX);
        // Every busy slot puts one token in each step's batch, so the batch holds at least one per slot.
        let batch_size = config.batch_size.max(parallel);
        let params = context_params(config, context_size, parallel, batch_size, threads);
        let ctx = model.new_context(&backend, params).map_err(|e| {
            format!(
                "cannot create a context of {parallel} × {context_size} tokens: {e}; \
                 try a smaller --ctx-size or --parallel"
            )
        })?;
        // llama.cpp rounds each sequence's share up to a multiple of 256.
        let slot_context = ctx.n_ctx() / parallel;
        let custom = config.chat_template.as_ref().map(|(source, origin)| (source.as_str(), *origin));
        let template = Template::load(&model, custom)?;
        // The models beside the model go where it went: all on the GPUs when it fits there, else the CPU. With
        // workers, on this machine: an embedding goes straight to the client, and only the model's own output
        // is checked against a lost worker before anyone sees it.
        let on_gpus = offload.layers > 0 && offload.layers >= offload.total_layers;
        let beside_gpu_layers = if on_gpus && crate::rpc::remote::workers().is_empty() { -1 } else { 0 };
        let embedder = match &config.embedding_model {
            Some(span) => Some(load_embedder(&backend, span, config.use_mmap, beside_gpu_layers)?),
            None => None,
        };
        // The projector goes to the GPU with the model's first layer, as the plan counted it.
        let projector_on_gpu = offload.layers > 0;
        let projector = match &config.mmproj {
            Some(source) => {
                let file = super::projector_file::open(&source.span, source.sha256.as_deref())?;
                let batch = ctx.n_batch();
                Some(Arc::new(Projector::load(file.path(), &model, threads, projector_on_gpu, batch)?))
            }
            None => None,
        };
        let _ = self.prompter.set(Prompter {
            model: Arc::clone(&model),
            projector: projector.clone(),
            embedder: embedder.as_ref().map(|(model, about)| (Arc::clone(model), about.context_size)),
            template,
            system_prompt: config.system_prompt.clone(),
            context_size: slot_context,
        });
        // Guesses the model rejects are dropped from the cache's end, which a recurrent model's cache cannot do.
        let mut spec_config = config.speculation;
        if spec_config.enabled() && (model.is_recurrent() || model.is_hybrid()) {
            if spec_config.mode != SpecMode::Auto {
                eprintln!("speculation is off: this model's cache (recurrent) cannot drop rejected guesses");
            }
            spec_config.mode = SpecMode::None;
        }
        let draft_model = match (&config.draft, spec_config.mode) {
            (Some(span), SpecMode::Auto | SpecMode::Draft) if spec_config.enabled() => {
                Some(load_draft(&backend, span, &model, config.use_mmap, beside_gpu_layers)?)
            }
            _ => None,
        };
        spec_config.mode = match (spec_config.mode, &draft_model) {
            (SpecMode::Auto | SpecMode::Draft, Some(_)) => SpecMode::Draft,
            (SpecMode::Auto, None) => SpecMode::Ngram,
            (mode, _) => mode,
        };
        let draft = match &draft_model {
            Some(draft) if spec_config.enabled() => {
                let params = context_params(config, context_size, parallel, batch_size, threads)
                    .with_type_k(llama_cpp_2::context::params::KvCacheType::F16)
                    .with_type_v(llama_cpp_2::context::params::KvCacheType::F16);
                let ctx = draft.new_context(&backend, params).map_err(|e| {
                    format!("cannot create the draft model's context of {parallel} × {context_size} tokens: {e}")
                })?;
                Some((draft, ctx))
            }
            _ => None,
        };
        let speculation = Speculation::new(spec_config, parallel, draft)?;
        let layers = model.n_layer();
        let gpu_layers = offload.layers.min(layers);
        self.status.set(LoadState::Ready(Box::new(Runtime {
            context_size: slot_context,
            parallel,
            threads: config.threads,
            mmap: config.use_mmap,
            load_seconds: started.elapsed().as_secs_f64(),
            cpu_variant: hardware::backends::current().cpu_variant.clone(),
            cpu_features: hardware::cpu_backend_features(&crate::llama::system_info()),
            layers,
            gpu_layers,
            gpus,
            offload,
            kv_cache: config.kv_cache,
            speculation: spec_config,
            embedding_model: embedder.as_ref().map(|(_, about)| about.clone()),
            projector: config.mmproj.as_ref().zip(projector.as_deref()).map(|(source, p)| ProjectorInfo {
                file: source.file_name.clone(),
                kind: source.header.kind.clone(),
                vision: p.vision,
                audio: p.audio,
                bytes: source.span.len,
                on_gpu: projector_on_gpu,
            }),
        })));

        let batch = LlamaBatch::new(ctx.n_batch() as usize, 1);
        let slots = (0..parallel as i32).map(Slot::new).collect();
        let mut scheduler = Scheduler {
            model: &model,
            ctx,
            batch,
            slots,
            slot_context,
            // Embeddings come from the embedding model when there is one, else from the model's own states.
            embedding: match &embedder {
                Some((embedder, about)) => EmbedQueue::new(embedder, &backend, about.context_size, threads),
                None => EmbedQueue::new(&model, &backend, slot_context, threads),
            },
            metrics: &self.metrics,
            speculation,
            projector,
            step: 0,
        };
        Ok(scheduler.run(&queue))
    }
}

/// Why the scheduler stopped.
enum Ended {
    /// Every sender is gone: the engine was dropped.
    Closed,
    /// A worker holding part of the model was lost (`rpc/remote.rs`); the answers in flight were ended.
    Unusable(String),
}

/// A context of `parallel` sequences of `context_size` tokens, with the run's threads and KV cache.
fn context_params(
    config: &EngineConfig,
    context_size: u32,
    parallel: u32,
    batch_size: u32,
    threads: i32,
) -> LlamaContextParams {
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context_size.saturating_mul(parallel)))
        .with_n_seq_max(parallel)
        // One KV stream per slot: conversations do not share prefixes, and split streams decode faster.
        .with_kv_unified(false)
        .with_n_batch(batch_size)
        .with_n_ubatch(batch_size)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(config.kv_cache.type_k.llama())
        .with_type_v(config.kv_cache.type_v.llama())
        .with_flash_attention_policy(config.kv_cache.flash_attn.llama())
}

/// Loads the draft model (`--draft`) and checks that it can guess the model's tokens.
fn load_draft(
    backend: &llama_cpp_2::llama_backend::LlamaBackend,
    span: &ModelSpan,
    model: &LlamaModel,
    use_mmap: bool,
    gpu_layers: i32,
) -> Result<LlamaModel, String> {
    let draft = crate::llama::load_model_at(backend, &span.path, span.offset, use_mmap, gpu_layers)
        .map_err(|e| format!("the draft model: {e}"))?;
    if !crate::llama::speculative::vocabularies_match(model, &draft) {
        return Err(format!(
            "the draft model {} has another vocabulary than the model, so it cannot guess its tokens; use a \
             smaller model of the same family (the same tokenizer), or --spec ngram",
            span.path.display()
        ));
    }
    Ok(draft)
}

/// Loads the embedding model (`--embedding-model`); its inputs may hold its trained context, up to 8192 tokens
/// (each input is one decode).
fn load_embedder(
    backend: &llama_cpp_2::llama_backend::LlamaBackend,
    span: &ModelSpan,
    use_mmap: bool,
    gpu_layers: i32,
) -> Result<(Arc<LlamaModel>, EmbeddingModel), String> {
    let model = crate::llama::load_model_at(backend, &span.path, span.offset, use_mmap, gpu_layers)
        .map_err(|e| format!("the embedding model: {e}"))?;
    let name = model.meta_val_str("general.name").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
        span.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "embedding model".into())
    });
    let about = EmbeddingModel {
        name,
        context_size: model.n_ctx_train().clamp(1, MAX_EMBEDDING_CONTEXT),
        dimensions: u32::try_from(model.n_embd()).unwrap_or(0),
    };
    Ok((Arc::new(model), about))
}

/// Tokens an input to a separate embedding model may hold (each input is one batch of this many).
const MAX_EMBEDDING_CONTEXT: u32 = 8192;

/// Up to [`DEFAULT_PARALLEL`] slots, fewer when their KV cache would take more than a quarter of the memory
/// that is free once the model is loaded.
fn default_parallel(layout: &ModelLayout, context_size: u32) -> u32 {
    let per_slot = layout.kv_bytes(u64::from(context_size));
    let Some(available) = hardware::available_memory() else { return DEFAULT_PARALLEL };
    let parallel = (available / 4 / per_slot.max(1)).clamp(1, u64::from(DEFAULT_PARALLEL)) as u32;
    if parallel < DEFAULT_PARALLEL {
        eprintln!(
            "serving {parallel} conversation(s) at once: each needs {} of memory for {context_size} tokens \
             (set --parallel or --ctx-size to change this)",
            hardware::human_bytes(per_slot)
        );
    }
    parallel
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// Reused for every decode, sized to the context's batch.
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    slot_context: u32,
    /// Embedding requests, a piece of one per step.
    embedding: EmbedQueue<'m>,
    metrics: &'m Metrics,
    /// Guesses tokens to decode together with each generating slot's next one (`--spec`).
    speculation: Option<Speculation<'m>>,
    /// Reads the pictures of prompts that have them (`--mmproj`).
    projector: Option<Arc<Projector>>,
    step: u64,
}

impl Scheduler<'_> {
    fn run(&mut self, queue: &Receiver<Work>) -> Ended {
        loop {
            self.step += 1;
            if !self.admit(queue) {
                return Ended::Closed;
            }
            // A piece of embedding work per step, so neither kind of request waits for the other to finish.
            self.embedding.step(self.metrics);
            for slot in &mut self.slots {
                if slot.is_abandoned() {
                    slot.cancel(self.metrics);
                }
            }
            self.sync_busy_count();
            let filled = self.fill_batch();
            self.decode_media();
            if filled == 0 {
                if let Some(why) = crate::rpc::remote::lost() {
                    return self.end_all(why);
                }
                continue;
            }
            let started = Instant::now();
            let decoded = self.ctx.decode(&mut self.batch);
            Metrics::add(&self.metrics.decode_calls, 1);
            Metrics::add(&self.metrics.decode_tokens, self.batch.n_tokens() as u64);
            Metrics::add(&self.metrics.decode_micros, started.elapsed().as_micros() as u64);
            // A lost worker's part of the step was answered with stand-ins: nothing of it may reach anyone. The
            // decode finishes (and the logits arrive) only at a synchronize, so that comes first.
            if !crate::rpc::remote::workers().is_empty() {
                self.ctx.synchronize();
                if let Some(why) = crate::rpc::remote::lost() {
                    return self.end_all(why);
                }
            }
            if let Err(e) = decoded {
                for slot in self.slots.iter_mut().filter(|s| s.in_batch()) {
                    slot.fail(EngineError::Inference(e.to_string()), &mut self.ctx);
                }
                continue;
            }
            for slot in &mut self.slots {
                let speculation = self.speculation.as_mut();
                let outcome =
                    slot.after_decode(self.model, &mut self.ctx, self.slot_context, self.metrics, speculation);
                if let Outcome::Cancelled = outcome {
                    slot.cancel(self.metrics);
                }
            }
            self.sync_busy_count();
        }
    }

    /// Ends every answer in flight, and every request still queued, with `why`: the model cannot be used any
    /// more. (Embedding requests in progress end when their replies are dropped with the scheduler.)
    fn end_all(&mut self, why: String) -> Ended {
        for slot in self.slots.iter_mut().filter(|s| s.is_busy()) {
            slot.fail(EngineError::Unusable(why.clone()), &mut self.ctx);
        }
        Ended::Unusable(why)
    }

    /// Moves waiting requests into free slots (and embedding requests into their queue). Blocks while nothing
    /// runs; false once the engine is dropped.
    fn admit(&mut self, queue: &Receiver<Work>) -> bool {
        while self.slots.iter().any(|s| !s.is_busy()) && !self.embedding.is_full() {
            let idle = !self.slots.iter().any(Slot::is_busy) && self.embedding.is_empty();
            let work = if idle {
                match queue.recv() {
                    Ok(work) => work,
                    Err(_) => return false,
                }
            } else {
                match queue.try_recv() {
                    Ok(work) => work,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
                }
            };
            self.metrics.dequeued();
            let job = match work {
                Work::Generate(job) => *job,
                Work::Embed(job) => {
                    self.embedding.push(job);
                    continue;
                }
            };
            if job.events.is_closed() {
                Metrics::add(&self.metrics.cancelled, 1);
                continue;
            }
            // The free slot holding the longest start of this prompt; among equals, the one idle longest.
            let slot = self
                .slots
                .iter_mut()
                .filter(|s| !s.is_busy())
                .max_by_key(|s| (s.common_prefix(&job.prepared.tokens), std::cmp::Reverse(s.last_used)))
                .expect("a free slot");
            slot.last_used = self.step;
            slot.start(job, self.model, &mut self.ctx, self.slot_context, self.speculation.as_mut());
        }
        true
    }

    /// Puts every generating slot's next token in the batch, then prompt tokens in the room left.
    /// Returns how many tokens the batch holds.
    fn fill_batch(&mut self) -> i32 {
        self.batch.clear();
        let capacity = self.ctx.n_batch() as usize;
        self.slots.iter_mut().for_each(Slot::begin_step);
        // Generating slots first, so a long prompt never holds back the others' next tokens.
        let mut order: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].is_busy()).collect();
        order.sort_by_key(|&i| !self.slots[i].is_generating());
        // Each generating slot has a place for its next token whatever the ones before it guessed.
        let mut generating_after = order.iter().filter(|&&i| self.slots[i].is_generating()).count();
        for i in order {
            generating_after = generating_after.saturating_sub(usize::from(self.slots[i].is_generating()));
            let room = (capacity - self.batch.n_tokens() as usize).saturating_sub(generating_after);
            let speculation = self.speculation.as_mut();
            if let Err(error) = self.slots[i].add_to_batch(&mut self.batch, room, self.slot_context, speculation) {
                self.slots[i].fail(error, &mut self.ctx);
            }
        }
        self.batch.n_tokens()
    }

    /// Decodes the pictures and sounds that slots' prompts have reached (each into its slot's sequence, by the projector).
    fn decode_media(&mut self) {
        let Some(projector) = &self.projector else { return };
        for slot in self.slots.iter_mut().filter(|s| s.media_due()) {
            let started = Instant::now();
            if let Err(error) = slot.decode_media(&mut self.ctx, projector) {
                slot.fail(error, &mut self.ctx);
            }
            Metrics::add(&self.metrics.decode_micros, started.elapsed().as_micros() as u64);
        }
    }

    fn sync_busy_count(&self) {
        let busy = self.slots.iter().filter(|s| s.is_busy()).count() as u64;
        self.metrics.busy_slots.store(busy, std::sync::atomic::Ordering::Relaxed);
    }
}
