//! The command line: what each flag means, and how a bundle's default arguments merge in before the user's.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::{CacheType, FlashAttention, SpecMode};
pub use crate::hardware::backends::GpuChoice;

#[derive(Debug, Parser)]
#[command(
    name = "stove",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("STOVE_COMMIT"), ")"),
    about = "Pack a GGUF model into one executable that serves a local chat page and an OpenAI-compatible API",
    long_about = None,
    // A bundle's default arguments come first; a flag the user repeats replaces the default.
    args_override_self = true,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the chat page and the API (the default when no command is given)
    Serve,
    /// Chat in the terminal, or answer one prompt with -p
    Chat(ChatArgs),
    /// Write a single executable holding this engine and a model
    Pack(PackArgs),
    /// Show what a bundle or GGUF holds and what this machine has
    Info(InfoArgs),
    /// Check a bundle against its manifest (and signature): exit 0 intact, 1 damaged, 3 unsigned, 4 bad signature
    Verify(VerifyArgs),
    /// Make an Ed25519 key pair for signing bundles and for the link between machines (--identity)
    Keygen(KeygenArgs),
    /// Lend this machine's GPUs (or its CPU) to stove instances on other machines (--worker there)
    Worker(WorkerArgs),
}

/// Options for serving and chatting; a bundle's default arguments may set any of them.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// A GGUF model or a stove bundle to use instead of the model packed in this file
    #[arg(short, long, global = true, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Address to listen on; anything but loopback exposes the model to the network
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; if taken, the next free one is used. 0 picks any free port
    #[arg(long, global = true, default_value_t = 8080)]
    pub port: u16,
    /// Context of each conversation in tokens (0: the model's trained context) [default: 4096, at most the
    /// trained context]
    #[arg(short = 'c', long, global = true, value_name = "TOKENS")]
    pub ctx_size: Option<u32>,
    /// Conversations generated at once, in shared batches; more wait in a queue [default: 4, fewer when
    /// memory is short]
    #[arg(short = 'n', long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: Option<u32>,
    /// Requests that may wait for a free slot; more are answered 503 with Retry-After
    #[arg(long, global = true, value_name = "N", default_value_t = crate::engine::DEFAULT_QUEUE,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..=65536), |n| n as usize))]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every API route (needed to listen beyond loopback)
    #[arg(long, global = true, env = "STOVE_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Read the API key from the first line of this file (keeps it out of the process list)
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// Also answer requests whose Host header is this name (localhost and IP addresses always are)
    #[arg(long, global = true, value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// Let web pages from this origin (like http://localhost:3000) call the API; `*` allows any
    #[arg(long, global = true, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// The address of a TLS proxy in front of stove: its X-Forwarded-Proto (or Forwarded) header is believed,
    /// so the page served as https://NAME works; from any other peer the header is ignored
    #[arg(long, global = true, value_name = "IP")]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// CPU threads [default: the number of physical cores]
    #[arg(short, long, global = true)]
    pub threads: Option<usize>,
    /// Tokens processed per step while reading the prompt
    #[arg(long, global = true, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Layers to put on the GPU, when there is one (-1: all) [default: as many as fit with the KV cache]
    #[arg(long, global = true, allow_negative_numbers = true)]
    pub gpu_layers: Option<i32>,
    /// GPU backend: auto (CUDA when it finds a GPU, else Vulkan), none (CPU only), vulkan or cuda
    #[arg(long, global = true, value_enum, default_value_t = GpuChoice::Auto, value_name = "BACKEND")]
    pub gpu: GpuChoice,
    /// How the KV cache stores keys: f16, or quantized (q8_0 halves the memory, q4_0 takes under a third)
    #[arg(long, global = true, value_enum, default_value_t = CacheType::F16, value_name = "TYPE")]
    pub cache_type_k: CacheType,
    /// How the KV cache stores values; a quantized one needs flash attention (the default, auto, has it
    /// where the device does)
    #[arg(long, global = true, value_enum, default_value_t = CacheType::F16, value_name = "TYPE")]
    pub cache_type_v: CacheType,
    /// Flash attention: auto (where the model and device support it), on or off
    #[arg(long, global = true, value_enum, default_value_t = FlashAttention::Auto, value_name = "WHEN")]
    pub flash_attn: FlashAttention,
    /// Speculative decoding: ngram guesses the next tokens from earlier in the conversation, draft with a small
    /// model of the same vocabulary (--draft), and the model keeps the guesses it agrees with (same answers,
    /// fewer decodes); auto picks the draft model when there is one, else ngram; none turns it off
    #[arg(long, global = true, value_enum, default_value_t = SpecMode::Auto, value_name = "KIND")]
    pub spec: SpecMode,
    /// A small model with the same vocabulary that guesses the next tokens for the model (a GGUF, or another
    /// stove file's model); --spec auto then uses it
    #[arg(long, global = true, value_name = "PATH")]
    pub draft: Option<PathBuf>,
    /// Most tokens guessed at once (0 turns speculation off)
    #[arg(long, global = true, default_value_t = crate::engine::DEFAULT_DRAFT_MAX, value_name = "N",
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub draft_max: u16,
    /// Guesses shorter than this are not tried
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub draft_min: u16,
    /// How many of the latest tokens must appear earlier in the conversation for an n-gram guess
    #[arg(long, global = true, default_value_t = crate::engine::DEFAULT_NGRAM, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub spec_ngram: u16,
    /// An embedding model (a GGUF that pools, e.g. nomic-embed-text or bge, or another stove file's model) that
    /// serves /v1/embeddings in place of the chat model; the page then ranks document passages with it too
    #[arg(long, global = true, value_name = "PATH")]
    pub embedding_model: Option<PathBuf>,
    /// The projector that lets the model read pictures (the mmproj GGUF published with a vision model)
    #[arg(long, global = true, value_name = "PATH")]
    pub mmproj: Option<PathBuf>,
    /// Read the weights into memory instead of mapping them from the file
    #[arg(long, global = true)]
    pub no_mmap: bool,
    /// System prompt used when a conversation has none
    #[arg(long, global = true)]
    pub system_prompt: Option<String>,
    /// Render conversations with this Jinja chat template instead of the model's own (for a model whose
    /// template is missing or broken)
    #[arg(long, global = true, value_name = "FILE")]
    pub chat_template_file: Option<PathBuf>,
    /// Default sampling temperature (0: always the most likely token)
    #[arg(long, global = true, default_value_t = 0.8)]
    pub temperature: f32,
    /// Default top-k sampling (0: off)
    #[arg(long, global = true, default_value_t = 40)]
    pub top_k: i32,
    /// Default top-p (nucleus) sampling
    #[arg(long, global = true, default_value_t = 0.95)]
    pub top_p: f32,
    /// Default min-p sampling
    #[arg(long, global = true, default_value_t = 0.05)]
    pub min_p: f32,
    /// Default seed, for answers that repeat exactly
    #[arg(long, global = true)]
    pub seed: Option<u32>,
    /// Open the chat page in the default browser once ready
    #[arg(long, global = true, conflicts_with = "no_browser")]
    pub browser: bool,
    /// Do not open a browser, even when started without a terminal
    #[arg(long, global = true)]
    pub no_browser: bool,
    /// Run without the sandbox (on Linux the server otherwise confines itself once it listens: the model and
    /// system folders read-only, nothing written, no programs, no connections; see SECURITY.md)
    #[arg(long, global = true)]
    pub no_sandbox: bool,
    /// Show llama.cpp's own log lines
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Check every part of the bundle against its manifest before starting (reads the whole file)
    #[arg(long, global = true)]
    pub verify: bool,
    /// Refuse to start unless the bundle is intact and signed by this public key
    #[arg(long, global = true, value_name = "PUB")]
    pub require_signature: Option<PathBuf>,
    /// Place layers on another machine's devices too: a `stove worker` there at HOST:PORT, whose public key
    /// (its --identity's .pub file) must be named unless it is on this machine. Repeatable
    #[arg(long, global = true, value_name = "HOST:PORT@KEY.pub")]
    pub worker: Vec<crate::rpc::remote::WorkerSpec>,
    /// Start even when a --worker cannot be reached (its layers go elsewhere)
    #[arg(long, global = true)]
    pub worker_optional: bool,
    /// This machine's private key on the link between machines (a `stove keygen` .key file): the one a worker's
    /// --allow-key names, or a worker's own [default: a key made for this run, which only a worker on this
    /// machine accepts]
    #[arg(long, global = true, value_name = "KEY")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ChatArgs {
    /// Answer this one prompt on standard output, then exit
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Most tokens per answer
    #[arg(long)]
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Args, Clone)]
pub struct PackArgs {
    /// Where to write the bundle
    #[arg(short, long, value_name = "OUT", required_unless_present = "stick")]
    pub output: Option<PathBuf>,
    /// Write a USB stick's layout into this folder instead: one bundle holding the model, an engine file for
    /// each other system (`--stick-engine`), and a README.txt saying which file to start where
    #[arg(long, value_name = "DIR", conflicts_with_all = ["output", "engine_only"])]
    pub stick: Option<PathBuf>,
    /// With --stick: an engine file for another system (from `scripts/build-engine aarch64|windows`), repeatable
    #[arg(long, value_name = "FILE", requires = "stick")]
    pub stick_engine: Vec<PathBuf>,
    /// With --stick: the systems the stick must start on (linux-x86_64, linux-aarch64, windows-x86_64)
    /// [default: the bundle's and each --stick-engine's]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "stick")]
    pub systems: Vec<String>,
    /// Name shown on the page and in /v1/models [default: the GGUF's general.name]
    #[arg(long)]
    pub name: Option<String>,
    /// Pack with the engine in this stove file (a bundle, or an engine-only file for another system) instead
    /// of the running one
    #[arg(long, value_name = "PATH")]
    pub engine: Option<PathBuf>,
    /// Write the engine alone, with no model: a stove program to carry or to pack with (`--engine`) later
    #[arg(long, conflicts_with_all = ["name", "web", "sign", "default_args", "chat_template"])]
    pub engine_only: bool,
    /// Leave the GPU modules (Vulkan, CUDA) out: a smaller file that runs on the CPU on every machine
    #[arg(long)]
    pub cpu_only: bool,
    /// A folder with an index.html that replaces the built-in chat page
    #[arg(long, value_name = "DIR")]
    pub web: Option<PathBuf>,
    /// A Jinja chat template to store in the bundle and use instead of the model's own (covered by the
    /// manifest and the signature)
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Sign the bundle with this Ed25519 private key (from `stove keygen`)
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Default arguments for the bundle, applied before its command line's own
    #[arg(last = true, value_name = "DEFAULT ARGS")]
    pub default_args: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// The bundle to check [default: this executable]
    pub file: Option<PathBuf>,
    /// Also require a valid signature by this public key (from `stove keygen`)
    #[arg(long, value_name = "PUB")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (private; keep it secret) and PREFIX.pub (give it to whoever checks bundles)
    #[arg(short, long, value_name = "PREFIX")]
    pub output: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// Where main instances reach this worker; anything but loopback needs --allow-key and --identity
    #[arg(long, default_value = "0.0.0.0:50052", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// A main instance's public key (its --identity's .pub file) that may use this machine's devices; repeatable
    #[arg(long, value_name = "PUB")]
    pub allow_key: Vec<PathBuf>,
    /// Keep the weights main instances send in this folder, so the next start sends only their hashes
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct InfoArgs {
    /// A bundle or GGUF [default: this executable]
    pub file: Option<PathBuf>,
}

impl Cli {
    /// Parses `user_args` (program name first) after `defaults` from a bundle.
    pub fn parse_with_defaults(defaults: &[String], user_args: &[OsString]) -> Result<Cli, clap::Error> {
        let mut args = Vec::with_capacity(defaults.len() + user_args.len());
        args.extend(user_args.first().cloned());
        args.extend(defaults.iter().map(OsString::from));
        args.extend(user_args.iter().skip(1).cloned());
        Cli::try_parse_from(args)
    }
}

/// Checks that a bundle's default arguments are options stove understands, so a typo fails at pack time.
pub fn check_default_args(args: &[String]) -> Result<(), String> {
    let cli = Cli::parse_with_defaults(args, &[OsString::from("stove")]).map_err(|e| e.to_string())?;
    if cli.command.is_some() {
        return Err("default arguments cannot name a command".into());
    }
    if cli.run.model.is_some() {
        return Err("default arguments cannot set --model; the bundle's model is the one packed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn user_flags_override_bundle_defaults() {
        let defaults = vec!["--port".to_string(), "9000".into(), "--ctx-size".into(), "2048".into()];
        let cli = Cli::parse_with_defaults(&defaults, &args(&["stove", "--port", "9100"])).unwrap();
        assert_eq!(cli.run.port, 9100);
        assert_eq!(cli.run.ctx_size, Some(2048));
    }

    #[test]
    fn defaults_apply_to_subcommands_too() {
        let defaults = vec!["--system-prompt".to_string(), "Be brief.".into()];
        let cli = Cli::parse_with_defaults(&defaults, &args(&["stove", "chat", "-p", "hi"])).unwrap();
        assert_eq!(cli.run.system_prompt.as_deref(), Some("Be brief."));
        assert!(matches!(cli.command, Some(Command::Chat(ChatArgs { prompt: Some(_), .. }))));
    }

    #[test]
    fn bad_default_args_are_caught_at_pack_time() {
        assert!(check_default_args(&["--ctx-size".into(), "2048".into()]).is_ok());
        assert!(check_default_args(&["--ctx-sise".into(), "2048".into()]).is_err());
        assert!(check_default_args(&["chat".into()]).is_err());
        assert!(check_default_args(&["--model".into(), "x.gguf".into()]).is_err());
    }

    #[test]
    fn pack_takes_default_args_after_a_double_dash() {
        let cli =
            Cli::try_parse_from(args(&["stove", "pack", "-m", "a.gguf", "-o", "out", "--", "--port", "1"])).unwrap();
        let Some(Command::Pack(pack)) = cli.command else { panic!("not pack") };
        assert_eq!(pack.default_args, vec!["--port", "1"]);
        assert_eq!(cli.run.model, Some(PathBuf::from("a.gguf")));
    }

    /// One argument as a bundle's args.json might hold it: a real flag or value, or anything at all.
    fn any_argument() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        const KNOWN: &[&str] = &[
            "--port",
            "--ctx-size",
            "-c",
            "--host",
            "--",
            "chat",
            "-p",
            "--temperature",
            "--api-key",
            "--parallel",
            "-n",
            "--max-queue",
            "--gpu-layers",
            "--gpu",
            "vulkan",
            "-1",
            "0",
            "99999999999",
            "nan",
            "",
        ];
        prop_oneof![proptest::sample::select(KNOWN).prop_map(str::to_string), ".{0,12}"]
    }

    proptest::proptest! {
        /// Whatever a bundle's args.json holds, parsing it is an answer or an error, never a panic.
        #[test]
        fn any_default_arguments_parse_or_fail_cleanly(list in proptest::collection::vec(any_argument(), 0..8)) {
            let _ = check_default_args(&list);
            let _ = Cli::parse_with_defaults(&list, &args(&["stove", "--port", "0"]));
        }
    }
}
