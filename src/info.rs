//! `stove info`: what a bundle or GGUF holds, and what this machine has to run it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::bundle::{self, ModelSource};
use crate::cli::InfoArgs;
use crate::engine::{KvCache, DEFAULT_CONTEXT, DEFAULT_PARALLEL};
use crate::gguf::GgufInfo;
use crate::hardware::capacity::{self, Fit};
use crate::hardware::{self, human_bytes, Hardware};
use crate::llama::chat::ChatTemplates;

pub fn run(args: &InfoArgs, run: &crate::cli::RunArgs) -> Result<()> {
    let (gpu, template_file) = (run.gpu, run.chat_template_file.as_deref());
    let kv_cache = crate::settings::kv_cache(run)?;
    hardware::backends::load(gpu).map_err(anyhow::Error::msg)?;
    // `--worker`: the plan below places layers on the workers' devices too, as serving would.
    crate::settings::Workers::from_run(run).connect()?;
    // `stove info FILE`, or the model `--model` names (as `serve` takes it), or this file.
    let path = match args.file.as_ref().or(run.model.as_ref()) {
        Some(path) => path.clone(),
        None => crate::this_file()?,
    };
    let model = print_model(&path, template_file, run.mmproj.as_deref())?;
    println!();
    let hw = hardware::detect();
    print_machine(&hw);
    println!();
    print_capacity(&hw, model.as_ref(), &kv_cache);
    Ok(())
}

/// What the capacity estimate needs of the file's model: its header, its size, and its projector's bytes.
struct Model {
    gguf: GgufInfo,
    size: u64,
    projector: u64,
}

/// Prints what the file holds; returns its model when it has one. `mmproj` is a projector named at run time.
fn print_model(path: &Path, template_file: Option<&Path>, mmproj: Option<&Path>) -> Result<Option<Model>> {
    let source = match bundle::open_model(path) {
        Ok(source) => source,
        Err(bundle::BundleError::NotAModel { .. }) => {
            println!("{}: no model packed in it (a bare stove engine, or not a stove file)", path.display());
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let span = source.span();
    let gguf = span.read_info()?;
    println!("{}", path.display());
    if let ModelSource::Bundle(bundle) = &source {
        let m = &bundle.manifest;
        println!("  bundle       {} (packed by stove {})", m.name, m.stove_version);
        println!("  launcher     {}", human_bytes(m.engine_len));
        println!("  model file   {} at byte {}", m.model.file_name, span.offset);
        println!("  sha256       {}", m.model.sha256);
        if !bundle.default_args.is_empty() {
            println!("  default args {}", bundle.default_args.join(" "));
        }
        if !bundle.web.is_empty() {
            println!("  chat page    its own ({} files)", bundle.web.len());
        }
        if let (Some(draft), Some(span)) = (&m.draft, &bundle.draft) {
            println!(
                "  draft model  {} ({} {}, {:.1} M parameters, {}) at byte {}: --spec auto guesses with it",
                draft.file_name,
                draft.architecture,
                draft.quantization,
                draft.parameters as f64 / 1e6,
                human_bytes(draft.size),
                span.offset
            );
        }
        if let (Some(embedding), Some(span)) = (&m.embedding, &bundle.embedding) {
            println!(
                "  embeddings   {} ({} {}, {:.1} M parameters, {}) at byte {}: serves /v1/embeddings",
                embedding.file_name,
                embedding.architecture,
                embedding.quantization,
                embedding.parameters as f64 / 1e6,
                human_bytes(embedding.size),
                span.offset
            );
        }
    }
    let projector = match (mmproj, &source) {
        (Some(path), _) => Some(crate::pack::check_projector(path)?),
        (None, ModelSource::Bundle(bundle)) => bundle.projector(),
        (None, ModelSource::Gguf(_)) => None,
    };
    if let Some(projector) = &projector {
        let at = match mmproj {
            Some(_) => "(--mmproj)".to_string(),
            None => format!("at byte {}", projector.span.offset),
        };
        println!(
            "  projector    {} ({}, {}) {at}: the model {}",
            projector.file_name,
            projector.header.kind,
            human_bytes(projector.span.len),
            bundle::senses(projector.header.vision, projector.header.audio),
        );
    }
    println!("  name         {}", gguf.name.as_deref().unwrap_or("(none)"));
    println!("  architecture {}", gguf.architecture);
    println!("  parameters   {:.1} M", gguf.parameters as f64 / 1e6);
    println!("  quantization {}", gguf.quantization);
    println!("  size         {}", human_bytes(span.len));
    match gguf.context_length {
        Some(n) => println!("  context      {n} tokens (trained)"),
        None => println!("  context      unknown"),
    }
    let packed = match &source {
        ModelSource::Bundle(bundle) => bundle.chat_template.as_deref(),
        ModelSource::Gguf(_) => None,
    };
    println!("  chat template {}", template_summary(gguf.chat_template.as_deref(), packed, template_file)?);
    let projector = projector.map_or(0, |p| p.span.len);
    Ok(Some(Model { gguf, size: span.len, projector }))
}

/// Which chat template a run would use and what it supports, as llama.cpp's chat layer reads it.
fn template_summary(own: Option<&str>, packed: Option<&str>, file: Option<&Path>) -> Result<String> {
    let (source, origin) = match (file, packed, own) {
        (Some(file), _, _) => {
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the chat template {}", file.display()))?;
            (source, format!("{} (--chat-template-file)", file.display()))
        }
        (None, Some(packed), _) => (packed.to_string(), "the bundle's own (pack --chat-template)".to_string()),
        (None, None, Some(own)) => (own.to_string(), "the model's own".to_string()),
        (None, None, None) => return Ok("ChatML (the model has none of its own): plain chat".into()),
    };
    Ok(match ChatTemplates::from_source(&source).and_then(|t| t.info()) {
        Ok(info) => format!("{origin}: {}", info.abilities()),
        Err(e) => format!("{origin}, which llama.cpp cannot read: {e}"),
    })
}

fn print_machine(hw: &Hardware) {
    println!("this machine");
    println!("  cpu          {}", hw.cpu);
    println!("  features     {}", hw.cpu_features.join(" "));
    println!("  cores        {} physical, {} logical", hw.physical_cores, hw.logical_cores);
    if let (Some(total), Some(available)) = (hw.memory_total, hw.memory_available) {
        println!("  memory       {} ({} available)", human_bytes(total), human_bytes(available));
    }
    let launch = crate::launch();
    println!("  engine       {} files, loaded from {}", launch.files.len() + launch.absent.len(), launch.placement);
    for note in &launch.notes {
        println!("               {note}");
    }
    println!("  sandbox      {}", crate::sandbox::available());
    let backends = hardware::backends::current();
    let variants: Vec<String> = backends
        .modules
        .iter()
        .filter_map(|m| Some(format!("{}={}", m.name.strip_prefix("cpu-")?, m.score?)))
        .collect();
    match &backends.cpu_variant {
        Some(variant) => println!("  cpu variant  {variant} (ggml's score of each: {})", variants.join(" ")),
        None => println!("  cpu variant  none loaded ({})", variants.join(" ")),
    }
    for module in backends.modules.iter().filter(|m| !m.name.starts_with("cpu")) {
        match &module.reason {
            None if module.name == hardware::backends::RPC_MODULE => {
                println!("  {:<12} loaded: lends and borrows devices (stove worker, --worker)", module.name)
            }
            None => println!("  {:<12} loaded", module.name),
            Some(reason) => println!("  {:<12} not used: {reason}", module.name),
        }
    }
    for device in &hw.devices {
        let memory =
            if device.memory_total > 0 { format!(", {}", human_bytes(device.memory_total)) } else { String::new() };
        match &device.worker {
            Some(worker) => println!(
                "  device       {} (worker {worker}: {} free of {})",
                device.name,
                human_bytes(device.memory_free),
                human_bytes(device.memory_total)
            ),
            None => println!("  device       {} ({}: {}{memory})", device.name, device.backend, device.description),
        }
    }
}

/// The GPU plan for this file's model at the default context, then what else would run here.
/// `kv_cache`: the cache the estimates count (`--cache-type-k/-v`; a q8_0 cache about halves it).
fn print_capacity(hw: &Hardware, model: Option<&Model>, kv_cache: &KvCache) {
    let gpus: Vec<_> = hw.devices.iter().filter(|d| d.is_gpu()).cloned().collect();
    let gpu_free: u64 = gpus.iter().map(|d| d.memory_free).sum();
    let available = hw.memory_available.unwrap_or(0);
    let bandwidth = capacity::memory_bandwidth(hw.physical_cores);
    // Workers' devices (`--worker`) count as GPUs in the plan; the words say which.
    let gpus_word = if gpus.iter().any(|d| d.worker.is_some()) { "the GPUs and workers" } else { "the GPU" };
    if let Some(Model { gguf, size, projector }) = model {
        let context = gguf.context_length.map_or(u64::from(DEFAULT_CONTEXT), |c| c.min(u64::from(DEFAULT_CONTEXT)));
        let layout = gguf.layout.with_kv_ratio(kv_cache.size_ratio());
        let plan = hardware::offload::plan(&layout, &gpus, u64::from(DEFAULT_PARALLEL), context, None, *projector);
        println!("this model here ({DEFAULT_PARALLEL} conversations of {context} tokens)");
        if !gpus.is_empty() {
            println!("  gpu plan     {}", plan.describe());
        }
        let needed =
            layout.weight_bytes().max(*size) + layout.kv_bytes(u64::from(DEFAULT_PARALLEL) * context) + projector;
        let verdict = match capacity::fit(needed, *size, gpu_free, available, bandwidth) {
            Fit::Gpu => format!("a good fit: it runs entirely on {gpus_word}"),
            Fit::Memory { tokens_per_second } if plan.layers > 0 => format!(
                "partly on {gpus_word}; in main memory alone about {tokens_per_second:.0} tokens/s for one conversation"
            ),
            Fit::Memory { tokens_per_second } => format!(
                "a good fit for main memory ({} of {} available): about {tokens_per_second:.0} tokens/s for one conversation",
                human_bytes(needed),
                human_bytes(available)
            ),
            Fit::TooBig => format!(
                "too big: it needs about {} and {} is available; use a smaller quantization or --ctx-size",
                human_bytes(needed),
                human_bytes(available)
            ),
        };
        println!("  fit          {verdict}");
        println!();
    }

    println!(
        "what this machine can run ({} context; main memory {} available at {:.1} GB/s{})",
        capacity::CONTEXT,
        human_bytes(available),
        bandwidth / 1e9,
        match gpus_word {
            _ if gpus.is_empty() => String::new(),
            "the GPU" => format!(", GPUs {} free", human_bytes(gpu_free)),
            _ => format!(", GPUs and workers {} free", human_bytes(gpu_free)),
        }
    );
    print!("  {:<6}", "size");
    for (name, _) in capacity::QUANTIZATIONS {
        print!(" {name:>14}");
    }
    println!();
    for billions in capacity::SIZES {
        print!("  {:<6}", format!("{billions}B"));
        for (_, bits) in capacity::QUANTIZATIONS {
            let bytes = capacity::footprint(billions, bits, kv_cache.size_ratio());
            let weights = (billions * 1e9 * bits / 8.0) as u64;
            let cell = match capacity::fit(bytes, weights, gpu_free, available, bandwidth) {
                Fit::Gpu => "GPU".to_string(),
                Fit::Memory { tokens_per_second } => format!("RAM ~{tokens_per_second:.0} t/s"),
                Fit::TooBig => "-".to_string(),
            };
            print!(" {cell:>14}");
        }
        println!();
    }
    println!("  (t/s: tokens per second for one conversation, from memory bandwidth; a rough upper bound)");
}
