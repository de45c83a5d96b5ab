//! `stove serve` (the default command): load the model, serve the page and the API, open a browser.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

use crate::bundle::{self, Bundle, ModelSource};
use crate::cli::RunArgs;
use crate::engine::Engine;
use crate::hardware;
use crate::sandbox::{self, Confinement};
use crate::server::{self, AppState, Assets, Guard};
use crate::settings::Settings;

/// The model to run and the default arguments that come with it: `--model`'s, or this executable's own.
/// `serving`: the command is `serve`, which may ask in the browser which of several models beside it to run.
pub fn model_source(run: &RunArgs, serving: bool) -> Result<(ModelSource, Vec<String>)> {
    let source = match &run.model {
        Some(path) => bundle::open_model(path)?,
        None => {
            let exe = crate::this_file()?;
            match Bundle::find(&exe)? {
                Some(bundle) => ModelSource::Bundle(Box::new(bundle)),
                None => model_beside(&exe, run, serving)?,
            }
        }
    };
    let defaults = match &source {
        ModelSource::Bundle(bundle) => bundle.default_args.clone(),
        ModelSource::Gguf(_) => Vec::new(),
    };
    Ok((source, defaults))
}

/// The model for an engine that holds none (an engine file carried on a stick beside the models): the one GGUF
/// or bundle in its own folder ([`bundle::models_beside`]), named on stderr; several are listed to choose from, on
/// a page in the browser when serving with one to open (`chooser.rs`); none says how to get one.
fn model_beside(exe: &Path, run: &RunArgs, serving: bool) -> Result<ModelSource> {
    let choose_in_browser = serving && !run.no_browser && (run.browser || double_clicked());
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "stove".into());
    let mut found: Vec<(PathBuf, ModelSource)> = bundle::models_beside(exe)
        .into_iter()
        .filter_map(|(path, opened)| opened.ok().map(|source| (path, source)))
        .collect();
    match found.len() {
        0 => anyhow::bail!(
            "this stove engine holds no model, and there is none beside it. Serve one with `{name} --model \
             MODEL.gguf`, or pack one into a single file with `{name} pack --model MODEL.gguf -o my-model.stove`"
        ),
        1 => {
            let (path, source) = found.pop().expect("one");
            eprintln!("stove: this engine holds no model; serving {}, the one beside it", path.display());
            Ok(source)
        }
        _ if choose_in_browser => {
            let paths: Vec<PathBuf> = found.into_iter().map(|(path, _)| path).collect();
            crate::chooser::choose(&paths, run)?;
            anyhow::bail!("no model was chosen")
        }
        _ => {
            let names: Vec<String> =
                found.iter().map(|(p, _)| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
            anyhow::bail!(
                "this stove engine holds no model, and {} models are beside it: {}. Choose one with `{name} \
                 --model NAME`",
                names.len(),
                names.join(", ")
            )
        }
    }
}

pub fn run(source: &ModelSource, settings: &Settings) -> Result<()> {
    hardware::backends::load(settings.gpu).map_err(anyhow::Error::msg)?;
    settings.workers.connect()?;
    for line in engine_notes() {
        eprintln!("{line}");
    }
    let listener = server::bind(settings.host, settings.port)?;
    let url = server::display_url(listener.local_addr()?);
    // The browser is a program of its own: started before the sandbox refuses new programs.
    if should_open_browser(settings) {
        if let Err(e) = webbrowser::open(&url) {
            eprintln!("could not open a browser ({e}); open {url} yourself");
        }
    }
    // Listening, and no thread of ours started yet: from here on nothing can open what it does not need.
    let sandbox = confine(source, settings);
    let engine = Engine::start(source, settings.engine.clone())?;
    let web = match source {
        ModelSource::Bundle(bundle) => bundle.web.clone(),
        ModelSource::Gguf(_) => Vec::new(),
    };
    let guard = Guard::new(settings.api_key.as_deref(), &settings.allow_host, &settings.cors_origin)
        .trusting(&settings.trusted_proxy);
    let state = Arc::new(AppState::new(engine.clone(), Assets::new(&web), settings.sampling.clone(), guard, sandbox));
    println!("stove: chat with {} at {url}", engine.info().name);
    if !settings.host.is_loopback() {
        eprintln!("listening on {}: other machines can use this model with the API key", settings.host);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        std::thread::spawn(move || match engine.wait_ready() {
            Ok(runtime) => {
                eprintln!(
                    "model ready in {:.1} s: {} conversations at once, {} tokens each, {} threads, CPU: {}",
                    runtime.load_seconds,
                    runtime.parallel,
                    runtime.context_size,
                    runtime.threads,
                    runtime.cpu_variant.as_deref().unwrap_or("built in")
                );
                if !crate::rpc::remote::workers().is_empty() {
                    eprintln!("with workers: {}", runtime.offload.describe());
                } else if let Some(gpu) = runtime.gpus.first() {
                    eprintln!("GPU: {} ({}): {}", gpu.description, gpu.backend, runtime.offload.describe());
                }
                if let Some(embedding) = &runtime.embedding_model {
                    eprintln!(
                        "embeddings: {} ({} numbers a vector, inputs up to {} tokens)",
                        embedding.name, embedding.dimensions, embedding.context_size
                    );
                }
                if let Some(projector) = &runtime.projector {
                    eprintln!(
                        "projector: {} ({}, {}, {}): the model {}",
                        projector.file,
                        projector.kind,
                        hardware::human_bytes(projector.bytes),
                        if projector.on_gpu { "on the GPU" } else { "in main memory" },
                        crate::bundle::senses(projector.vision, projector.audio)
                    );
                }
                if runtime.speculation.mode == crate::engine::SpecMode::Draft {
                    eprintln!(
                        "speculative decoding: the draft model guesses up to {} tokens",
                        runtime.speculation.draft_max
                    );
                }
            }
            Err(e) => {
                eprintln!("stove: {e}");
                crate::exit_now(1);
            }
        });
        server::serve(listener, state).await
    })
}

/// Enters the sandbox (`sandbox.rs`) unless `--no-sandbox`: the model's file (and a draft or embedding model's)
/// stays readable. Call it on the main thread before the engine starts. A layer this kernel lacks is one line on stderr.
pub fn confine(source: &ModelSource, settings: &Settings) -> Confinement {
    if !settings.sandbox {
        return Confinement::off("--no-sandbox");
    }
    let mut readable = vec![source.span().path.as_path()];
    readable.extend(settings.engine.draft.as_ref().map(|span| span.path.as_path()));
    readable.extend(settings.engine.embedding_model.as_ref().map(|span| span.path.as_path()));
    readable.extend(settings.engine.mmproj.as_ref().map(|p| p.span.path.as_path()));
    let confinement = sandbox::enter(&readable);
    for note in &confinement.notes {
        eprintln!("sandbox: {note}");
    }
    confinement
}

/// What the person should know about how the engine started: why its files are not in memory, and why a GPU
/// module this file carries is not used here (one line each; the CPU path runs regardless).
pub fn engine_notes() -> Vec<String> {
    let mut lines = crate::launch().notes.clone();
    for module in hardware::backends::current().unused_gpu_modules() {
        lines.push(format!("{}: not used: {}", module.name, module.reason.as_deref().unwrap_or("unknown")));
    }
    lines
}

/// `--browser`/`--no-browser` decide; otherwise a browser opens when stove was started with no arguments and
/// no terminal, as by a double-click in a file manager.
fn should_open_browser(settings: &Settings) -> bool {
    if let Some(choice) = settings.browser {
        return choice;
    }
    double_clicked()
}

/// Started with no arguments and no terminal, as by a double-click in a file manager.
fn double_clicked() -> bool {
    std::env::args_os().len() == 1 && !std::io::stdin().is_terminal() && !std::io::stdout().is_terminal()
}
