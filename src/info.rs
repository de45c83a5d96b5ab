//! `stove info`: what a bundle or GGUF holds, and what this machine has to run it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::bundle::{self, ModelSource};
use crate::cli::InfoArgs;
use crate::hardware::{self, human_bytes};

pub fn run(args: &InfoArgs) -> Result<()> {
    let path = match &args.file {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("while finding this executable")?,
    };
    print_model(&path)?;
    println!();
    print_machine();
    Ok(())
}

fn print_model(path: &Path) -> Result<()> {
    let source = match bundle::open_model(path) {
        Ok(source) => source,
        Err(bundle::BundleError::NotAModel { .. }) => {
            println!("{}: no model packed in it (a bare stove engine, or not a stove file)", path.display());
            return Ok(());
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
    println!("  chat template {}", if gguf.chat_template.is_some() { "yes" } else { "no (ChatML is used)" });
    Ok(())
}

fn print_machine() {
    let hw = hardware::detect();
    println!("this machine");
    println!("  cpu          {}", hw.cpu);
    println!("  features     {}", hw.cpu_features.join(" "));
    println!("  cores        {} physical, {} logical", hw.physical_cores, hw.logical_cores);
    if let (Some(total), Some(available)) = (hw.memory_total, hw.memory_available) {
        println!("  memory       {} ({} available)", human_bytes(total), human_bytes(available));
    }
    let launch = crate::launch();
    let placement = match launch.placement.split_once(' ') {
        Some((how, dir)) => format!("{how} ({dir})"),
        None => launch.placement.clone(),
    };
    println!("  engine       {} files, loaded from {placement}", launch.files.len());
    for note in &launch.notes {
        println!("               {note}");
    }
    let backends = hardware::backends::load();
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
            None => println!("  {:<12} loaded", module.name),
            Some(reason) => println!("  {:<12} not used: {reason}", module.name),
        }
    }
    for device in &hw.devices {
        let memory =
            if device.memory_total > 0 { format!(", {}", human_bytes(device.memory_total)) } else { String::new() };
        println!("  device       {} ({}: {}{memory})", device.name, device.backend, device.description);
    }
}
