//! The inference engine: loads the model (mapped from its file, never copied) and runs many conversations at
//! once on one worker thread that owns the llama.cpp context. The server and `stove chat` talk to it over
//! channels.
//!
//! A request is rendered and tokenized on the caller's thread (so a prompt that cannot fit is refused at
//! once), then waits in a bounded queue for a free slot. The worker decodes every busy slot together in one
//! batch per step (continuous batching): a new request joins at the next step, a finished one leaves. Each
//! slot keeps the tokens its KV cache holds, so a follow-up turn only processes what is new. When a request's
//! event receiver is gone (the client left or pressed stop), its slot is freed before the next step.

mod embed;
mod kv_cache;
mod media;
pub mod metrics;
mod projector_file;
mod prompt;
mod request;
mod sampling;
mod slot;
mod speculation;
pub mod text;
mod worker;
pub use kv_cache::{CacheType, FlashAttention, KvCache};
pub use media::{Image, Media, Sound};
pub use speculation::{SpecConfig, SpecMode, DEFAULT_DRAFT_MAX, DEFAULT_NGRAM};
pub use worker::{DEFAULT_CONTEXT, DEFAULT_PARALLEL};

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use crate::bundle::{ModelSource, ModelSpan, ProjectorSource};
use crate::hardware;
pub use metrics::Metrics;
pub use prompt::TemplateOrigin;
use prompt::{Prepared, Prompter};
pub use request::{
    ChatMessage, ChatPrompt, EngineError, Event, Finish, FinishReason, Prompt, Reasoning, Request, Submitted,
    TokenChoice, TokenLogprob, ToolChoice,
};
pub use sampling::SamplingParams;

/// How many requests may wait for a free slot, by default, before new ones are refused with "busy".
pub const DEFAULT_QUEUE: usize = 32;
/// Most alternatives a request may ask for at each token (`top_logprobs`), as OpenAI allows.
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// Settings for loading the model and its context.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context per conversation in tokens: `None` for the default (4096, at most the trained context), 0 for
    /// the trained one.
    pub ctx_size: Option<u32>,
    /// Conversations decoded together; `None` picks what the memory allows, up to 4.
    pub parallel: Option<u32>,
    /// Requests that may wait for a free slot (at least 1).
    pub max_queue: usize,
    /// CPU threads, resolved and at least 1 (`settings.rs`).
    pub threads: usize,
    pub batch_size: u32,
    /// `--gpu-layers`; `None` plans from the GPUs' free memory.
    pub gpu_layers: Option<i32>,
    pub use_mmap: bool,
    pub system_prompt: Option<String>,
    /// A chat template to use instead of the model's: Jinja source and where it came from.
    pub chat_template: Option<(String, TemplateOrigin)>,
    /// The KV cache's number formats and flash attention.
    pub kv_cache: KvCache,
    /// Speculative decoding.
    pub speculation: SpecConfig,
    /// A draft model for speculation (`--draft`): a GGUF, or the model of another stove file.
    pub draft: Option<ModelSpan>,
    /// An embedding model that serves embeddings in place of the model (`--embedding-model`).
    pub embedding_model: Option<ModelSpan>,
    /// The projector that lets the model see or hear (`--mmproj`, or the bundle's).
    pub mmproj: Option<ProjectorSource>,
}

/// What the page, `/v1/models` and `stove info` show about the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub architecture: String,
    pub parameters: u64,
    pub quantization: String,
    pub trained_context: Option<u64>,
    pub file: PathBuf,
    pub size: u64,
}

/// What the loaded engine runs with.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Runtime {
    /// Tokens each conversation may hold.
    pub context_size: u32,
    /// Conversations decoded at once.
    pub parallel: u32,
    pub threads: usize,
    pub mmap: bool,
    pub load_seconds: f64,
    /// The CPU variant ggml's score picked for this processor, e.g. `haswell`.
    pub cpu_variant: Option<String>,
    /// The instructions that variant was built to use, e.g. AVX2, FMA.
    pub cpu_features: Vec<String>,
    /// The model's layers, and how many of them run on `gpus`.
    pub layers: u32,
    pub gpu_layers: u32,
    pub gpus: Vec<hardware::Device>,
    /// How the layers were split between the GPUs and the CPU, and why.
    pub offload: hardware::offload::OffloadPlan,
    /// The KV cache's number formats and the flash attention setting it was made with.
    pub kv_cache: KvCache,
    /// The speculation that runs (`mode` none when the model cannot have it).
    pub speculation: SpecConfig,
    /// The embedding model that answers embedding requests, when there is one (else the model does).
    pub embedding_model: Option<EmbeddingModel>,
    /// What the projector (`--mmproj`) lets the model read besides text, when there is one.
    pub projector: Option<ProjectorInfo>,
}

/// A projector loaded beside the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectorInfo {
    pub file: String,
    /// llama.cpp's name for its kind (gemma3, idefics3, ultravox …).
    pub kind: String,
    /// Whether the model can be shown pictures, and whether it can hear sound.
    pub vision: bool,
    pub audio: bool,
    /// Its weights' bytes, and whether they went to the GPU (with the model's layers) or stayed in main memory.
    pub bytes: u64,
    pub on_gpu: bool,
}

/// An embedding model loaded beside the chat model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbeddingModel {
    pub name: String,
    /// Tokens one input may hold.
    pub context_size: u32,
    /// Numbers in each vector.
    pub dimensions: u32,
}

#[derive(Debug, Clone)]
pub enum LoadState {
    /// Loading, with progress in thousandths.
    Loading {
        permille: u32,
    },
    // Boxed: the runtime is large, and the state is cloned for every request.
    Ready(Box<Runtime>),
    Failed(String),
    /// Loaded, but it cannot be used any more: a worker holding part of it was lost (`rpc/remote.rs`).
    Unusable(String),
}

/// What waits in the worker's queue.
enum Work {
    Generate(Box<Job>),
    Embed(EmbedJob),
}

/// A request ready for a slot: tokenized, with what its template asks of generation and the channel its events
/// go to.
struct Job {
    request: Request,
    prepared: Prepared,
    events: mpsc::UnboundedSender<Event>,
}

/// Texts to embed, tokenized, and where their vectors go.
struct EmbedJob {
    inputs: Vec<Vec<LlamaToken>>,
    reply: tokio::sync::oneshot::Sender<Result<Embeddings, EngineError>>,
}

/// One L2-normalized vector per input, and the tokens they took.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
}

/// A handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    info: ModelInfo,
    status: Arc<Status>,
    /// Set by the worker once the model is loaded.
    prompter: Arc<OnceLock<Prompter>>,
    metrics: Arc<Metrics>,
    /// The worker's queue; when the last handle is gone the worker ends and frees the model.
    jobs: SyncSender<Work>,
    max_queue: usize,
    system_prompt: Option<String>,
}

/// The load state, shared with the worker thread, which changes it.
struct Status {
    state: Mutex<LoadState>,
    changed: Condvar,
}

impl Status {
    fn set(&self, state: LoadState) {
        *self.state.lock().expect("state lock") = state;
        self.changed.notify_all();
    }
}

impl Engine {
    /// Starts loading `source` on the worker thread and returns at once; [`Engine::state`] tells progress.
    pub fn start(source: &ModelSource, config: EngineConfig) -> anyhow::Result<Engine> {
        let span = source.span().clone();
        let gguf = span.read_info()?;
        let name = match source {
            ModelSource::Bundle(bundle) => bundle.manifest.name.clone(),
            ModelSource::Gguf(_) => span.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let info = ModelInfo {
            name,
            architecture: gguf.architecture,
            parameters: gguf.parameters,
            quantization: gguf.quantization,
            trained_context: gguf.context_length,
            file: span.path.clone(),
            size: span.len,
        };
        // At least 1: the flag's range (cli.rs) is the one check.
        let max_queue = config.max_queue;
        let system_prompt = config.system_prompt.clone();
        let (jobs, queue) = sync_channel::<Work>(max_queue);
        let status =
            Arc::new(Status { state: Mutex::new(LoadState::Loading { permille: 0 }), changed: Condvar::new() });
        let prompter = Arc::new(OnceLock::new());
        let metrics = Arc::new(Metrics::default());
        let worker = worker::Worker {
            span,
            layout: gguf.layout,
            trained_context: gguf.context_length,
            config,
            status: Arc::clone(&status),
            prompter: Arc::clone(&prompter),
            metrics: Arc::clone(&metrics),
        };
        std::thread::Builder::new().name("stove-engine".into()).spawn(move || worker.run(queue))?;
        Ok(Engine { shared: Arc::new(Shared { info, status, prompter, metrics, jobs, max_queue, system_prompt }) })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The system prompt a conversation without one gets (`--system-prompt`).
    pub fn system_prompt(&self) -> Option<&str> {
        self.shared.system_prompt.as_deref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The load state; a loaded model is unusable from the moment a worker holding part of it is lost, even
    /// before the scheduler's next step sees it.
    pub fn state(&self) -> LoadState {
        let state = self.shared.status.state.lock().expect("state lock").clone();
        match (state, crate::rpc::remote::lost()) {
            (LoadState::Ready(_), Some(why)) => LoadState::Unusable(why),
            (state, _) => state,
        }
    }

    /// Blocks until the model is loaded (or failed).
    pub fn wait_ready(&self) -> Result<Runtime, EngineError> {
        let mut state = self.shared.status.state.lock().expect("state lock");
        loop {
            match &*state {
                LoadState::Ready(runtime) => return Ok(Runtime::clone(runtime)),
                LoadState::Failed(message) => return Err(EngineError::LoadFailed(message.clone())),
                LoadState::Unusable(message) => return Err(EngineError::Unusable(message.clone())),
                LoadState::Loading { .. } => state = self.shared.status.changed.wait(state).expect("state lock"),
            }
        }
    }

    /// Checks and queues a generation; its events arrive on the returned channel. A prompt that cannot fit,
    /// a bad grammar or a full queue are refused here, before any work.
    pub fn submit(&self, request: Request) -> Result<Submitted, EngineError> {
        let prompter = self.prompter()?;
        let (prepared, reader) = prompter.prepare(&request)?;
        let template_ms = prepared.template_ms;
        let (events, receiver) = mpsc::unbounded_channel();
        self.queue(Work::Generate(Box::new(Job { request, prepared, events })))?;
        Ok(Submitted { events: receiver, reader, template_ms })
    }

    /// How many tokens `request`'s prompt takes once rendered (Anthropic's `count_tokens`); nothing is queued.
    pub fn count_tokens(&self, request: &Request) -> Result<u32, EngineError> {
        match self.prompter()?.prepare(request) {
            Ok((prepared, _)) => Ok(prepared.tokens.len() as u32),
            Err(EngineError::PromptTooLong { prompt_tokens, .. }) => Ok(prompt_tokens),
            Err(error) => Err(error),
        }
    }

    /// The tokens of `text` (special tokens written as text are read as such), with each one's text.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<(i32, String)>, EngineError> {
        let vocab = self.prompter()?.model.vocab();
        let tokens = vocab.tokenize(text.as_bytes(), add_special, true);
        Ok(tokens
            .into_iter()
            .map(|token| {
                let mut piece = Vec::new();
                vocab.token_to_piece_into(token, &mut piece, true, None);
                (token.0, String::from_utf8_lossy(&piece).into_owned())
            })
            .collect())
    }

    /// The prompt text `request` renders to (`/apply-template`, to compare with llama-server's).
    pub fn apply_template(&self, request: &Request) -> Result<String, EngineError> {
        self.prompter()?.prompt_text(request)
    }

    /// Which chat template the model speaks with, where it came from and what it supports.
    pub fn template(&self) -> Option<&prompt::Template> {
        self.shared.prompter.get().map(|p| &p.template)
    }

    /// Checks and queues texts to embed (the model's own pooling, or the mean of a generative model's last
    /// hidden states); the L2-normalized vectors arrive on the returned channel.
    pub fn embed(
        &self,
        texts: &[String],
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Embeddings, EngineError>>, EngineError> {
        let prompter = self.prompter()?;
        let inputs = texts.iter().map(|text| prompter.tokenize_input(text)).collect::<Result<Vec<_>, _>>()?;
        embed::check_budget(&inputs, u64::from(prompter.embedding_context()) * 16)?;
        let (reply, receiver) = tokio::sync::oneshot::channel();
        self.queue(Work::Embed(EmbedJob { inputs, reply }))?;
        Ok(receiver)
    }

    /// The tokenizer and checks, once the model is ready; the load state as an error before.
    fn prompter(&self) -> Result<&Prompter, EngineError> {
        match self.state() {
            LoadState::Loading { permille } => Err(EngineError::Loading { permille }),
            LoadState::Failed(message) => Err(EngineError::LoadFailed(message)),
            LoadState::Unusable(message) => Err(EngineError::Unusable(message)),
            LoadState::Ready(_) => self.shared.prompter.get().ok_or(EngineError::Loading { permille: 999 }),
        }
    }

    fn queue(&self, work: Work) -> Result<(), EngineError> {
        self.shared.metrics.queued();
        self.shared.jobs.try_send(work).map_err(|error| {
            self.shared.metrics.dequeued();
            match error {
                TrySendError::Full(_) => EngineError::Busy { waiting: self.shared.max_queue },
                TrySendError::Disconnected(_) => EngineError::Inference("the engine thread has stopped".into()),
            }
        })
    }
}

/// llama.cpp's and ggml's log lines go to stderr with `--verbose`, and nowhere otherwise. Set before anything
/// calls them, loading the backend modules included.
pub fn set_logging(verbose: bool) {
    if !verbose {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
    }
}

/// Starts llama.cpp once per process, after choosing its backends.
fn init_backend() -> Result<LlamaBackend, String> {
    // `load` must have registered the chosen backends before llama.cpp starts (this says so if not).
    crate::hardware::backends::current();
    LlamaBackend::init().map_err(|e| format!("cannot start llama.cpp: {e}"))
}

/// Reads the model once, sequentially, so that slow media (a USB 2 stick) shows real progress while pages
/// come in; the mapping llama.cpp makes afterwards finds them in the page cache. Skipped when the model is
/// too large for memory, where reading ahead would only evict other pages.
fn page_in(span: &ModelSpan, report: &dyn Fn(u32)) -> std::io::Result<()> {
    if hardware::available_memory().is_some_and(|free| span.len > free / 4 * 3) {
        return Ok(());
    }
    let mut file = File::open(&span.path)?;
    file.seek(SeekFrom::Start(span.offset))?;
    let mut remaining = span.len;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(span.len).with_style(
            ProgressStyle::with_template("loading model {percent:>3}% {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut buf = vec![0u8; 8 << 20];
    let started = Instant::now();
    while remaining > 0 {
        let want = buf.len().min(remaining as usize);
        file.read_exact(&mut buf[..want])?;
        remaining -= want as u64;
        bar.inc(want as u64);
        report((((span.len - remaining) as f64 / span.len as f64) * 900.0) as u32);
    }
    bar.finish_and_clear();
    if started.elapsed().as_secs() >= 2 {
        eprintln!("read the model in {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
