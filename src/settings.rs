//! The settings of a run (`serve` and `chat`): built once from the parsed flags after a bundle's default
//! arguments are merged in, checked here and nowhere else, and handed to the command. Everything that can refuse
//! a start (an API key that is missing or empty, a chat template that cannot be read) refuses here, before the
//! backends load or the model is read. (The shape follows miniserve: arguments → validated configuration.)

use std::net::IpAddr;

use anyhow::{bail, Context, Result};

use crate::bundle::{ModelSource, ModelSpan, ProjectorSource};
use crate::cli::{GpuChoice, RunArgs};
use crate::engine::{EngineConfig, FlashAttention, KvCache, SamplingParams, SpecConfig, SpecMode, TemplateOrigin};
use clap::ValueEnum;

/// A checked run configuration. Fields are final values: defaults resolved, files read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    /// The API key every API route requires, from `--api-key`, `STOVE_API_KEY` or `--api-key-file`.
    pub api_key: Option<String>,
    pub allow_host: Vec<String>,
    pub cors_origin: Vec<String>,
    pub trusted_proxy: Vec<IpAddr>,
    pub gpu: GpuChoice,
    pub engine: EngineConfig,
    /// What a request that sets nothing samples with.
    pub sampling: SamplingParams,
    /// Confine the process once listening (`sandbox.rs`); false with `--no-sandbox`.
    pub sandbox: bool,
    /// `--browser`, `--no-browser`, or neither (then: open one when double-clicked).
    pub browser: Option<bool>,
    pub verbose: bool,
    /// Other machines lending their devices (`--worker`, `rpc/remote.rs`), how to reach them, and whether the
    /// start goes on without one that cannot be reached.
    pub workers: Workers,
}

#[derive(Debug, Clone, Default)]
pub struct Workers {
    pub specs: Vec<crate::rpc::remote::WorkerSpec>,
    /// `--identity`: this machine's key on the link.
    pub identity: Option<std::path::PathBuf>,
    pub optional: bool,
}

impl Workers {
    /// The workers `--worker`, `--identity` and `--worker-optional` name.
    pub fn from_run(run: &RunArgs) -> Workers {
        Workers { specs: run.worker.clone(), identity: run.identity.clone(), optional: run.worker_optional }
    }

    /// Dials the workers and adds their devices (see `rpc::remote::connect_all`); after the backends load and
    /// before the sandbox.
    pub fn connect(&self) -> Result<()> {
        crate::rpc::remote::connect_all(&self.specs, self.identity.as_deref(), self.optional)
    }
}

impl Settings {
    /// Checks `run` for serving or chatting with `source`'s model.
    pub fn new(run: &RunArgs, source: &ModelSource) -> Result<Settings> {
        let api_key = api_key(run)?;
        if !run.host.is_loopback() && api_key.is_none() {
            bail!(
                "refusing to listen on {} without an API key: anyone on the network could use this model. \
                 Add --api-key KEY (or --api-key-file FILE, or set STOVE_API_KEY), or listen on 127.0.0.1",
                run.host
            );
        }
        let kv_cache = kv_cache(run)?;
        Ok(Settings {
            host: run.host,
            port: run.port,
            api_key,
            allow_host: run.allow_host.clone(),
            cors_origin: run.cors_origin.clone(),
            trusted_proxy: run.trusted_proxy.clone(),
            gpu: run.gpu,
            engine: EngineConfig {
                ctx_size: run.ctx_size,
                parallel: run.parallel,
                max_queue: run.max_queue,
                // 0 (or nothing): the physical cores.
                threads: run.threads.filter(|&t| t > 0).unwrap_or_else(crate::hardware::default_threads),
                batch_size: run.batch_size,
                gpu_layers: run.gpu_layers,
                use_mmap: !run.no_mmap,
                system_prompt: run.system_prompt.clone(),
                chat_template: chat_template(run, source)?,
                kv_cache,
                speculation: speculation(run)?,
                draft: draft(run, source)?,
                embedding_model: embedding_model(run, source)?,
                mmproj: mmproj(run, source)?,
            },
            sampling: SamplingParams {
                temperature: run.temperature,
                top_k: run.top_k,
                top_p: run.top_p,
                min_p: run.min_p,
                seed: run.seed,
                logit_bias: Vec::new(),
            },
            sandbox: !run.no_sandbox,
            browser: (run.browser || run.no_browser).then_some(run.browser),
            verbose: run.verbose,
            workers: Workers::from_run(run),
        })
    }
}

/// The KV cache `run` asks for; a quantized value cache needs flash attention (`stove info` counts it too).
pub fn kv_cache(run: &RunArgs) -> Result<KvCache> {
    let kv_cache = KvCache { type_k: run.cache_type_k, type_v: run.cache_type_v, flash_attn: run.flash_attn };
    if kv_cache.type_v.is_quantized() && kv_cache.flash_attn == FlashAttention::Off {
        bail!(
            "--cache-type-v {} needs flash attention, which --flash-attn off turns off; \
             leave --flash-attn at auto or use --cache-type-v f16",
            run.cache_type_v.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
        );
    }
    Ok(kv_cache)
}

/// Speculative decoding as `run` asks for it.
fn speculation(run: &RunArgs) -> Result<SpecConfig> {
    if run.draft_min > run.draft_max {
        bail!(
            "--draft-min {} is more than --draft-max {}: no guess could be tried; lower --draft-min",
            run.draft_min,
            run.draft_max
        );
    }
    Ok(SpecConfig { mode: run.spec, draft_max: run.draft_max, draft_min: run.draft_min, ngram: run.spec_ngram })
}

/// The draft model `--draft` names, or else the one the bundle carries, found before anything loads; `--spec
/// draft` needs one.
fn draft(run: &RunArgs, source: &ModelSource) -> Result<Option<ModelSpan>> {
    let Some(path) = &run.draft else {
        if let ModelSource::Bundle(bundle) = source {
            if let Some(draft) = &bundle.draft {
                return Ok(Some(draft.clone()));
            }
        }
        if run.spec == SpecMode::Draft {
            bail!(
                "--spec draft needs a draft model: add --draft SMALL.gguf (a smaller model with the same \
                 vocabulary) or pack one in with `stove pack --draft`, or use --spec ngram, which needs none"
            );
        }
        return Ok(None);
    };
    let source = crate::bundle::open_model(path).with_context(|| format!("--draft {}", path.display()))?;
    Ok(Some(source.span().clone()))
}

/// The embedding model `--embedding-model` names (checked to be one), or else the one the bundle carries.
fn embedding_model(run: &RunArgs, source: &ModelSource) -> Result<Option<ModelSpan>> {
    match (&run.embedding_model, source) {
        (Some(path), _) => Ok(Some(crate::pack::check_embedding_model(path)?.0)),
        (None, ModelSource::Bundle(bundle)) => Ok(bundle.embedding.clone()),
        (None, _) => Ok(None),
    }
}

/// The projector `--mmproj` names (checked to be one now rather than when the model has loaded), or else the
/// one the bundle carries.
fn mmproj(run: &RunArgs, source: &ModelSource) -> Result<Option<ProjectorSource>> {
    match (&run.mmproj, source) {
        (Some(path), _) => Ok(Some(crate::pack::check_projector(path)?)),
        (None, ModelSource::Bundle(bundle)) => Ok(bundle.projector()),
        (None, _) => Ok(None),
    }
}

/// The API key from `--api-key`, `STOVE_API_KEY` or `--api-key-file`.
fn api_key(run: &RunArgs) -> Result<Option<String>> {
    let key = match (&run.api_key, &run.api_key_file) {
        (Some(key), _) => key.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if key.is_empty() {
        bail!("the API key is empty; give a non-empty --api-key or a file whose first line is the key");
    }
    Ok(Some(key))
}

/// The command line's template, else the bundle's, else (None) the model's own.
fn chat_template(run: &RunArgs, source: &ModelSource) -> Result<Option<(String, TemplateOrigin)>> {
    Ok(match (&run.chat_template_file, source) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the chat template {}", path.display()))?;
            if text.trim().is_empty() {
                bail!("the chat template {} is empty; give a Jinja chat template", path.display());
            }
            Some((text, TemplateOrigin::File))
        }
        (None, ModelSource::Bundle(bundle)) => bundle.chat_template.clone().map(|t| (t, TemplateOrigin::Bundle)),
        (None, ModelSource::Gguf(_)) => None,
    })
}
