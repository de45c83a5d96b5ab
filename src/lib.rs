//! stove's engine: everything but the launcher, built as a shared library (`libstove.so`) that the launcher
//! loads after llama.cpp's libraries (see `main.rs`). `stove_main` is its entry; this file only dispatches.

mod bundle;
mod chat;
mod chooser;
mod cli;
mod engine;
mod gguf;
mod hardware;
mod info;
// Shared with the launcher, which uses parts the engine does not.
#[allow(dead_code)]
mod launch;
mod llama;
mod pack;
mod rpc;
mod sandbox;
mod serve;
mod server;
mod settings;
mod signing;
mod verify;

use std::ffi::{c_char, c_int, CStr, OsString};
use std::sync::OnceLock;

use cli::{Cli, Command};

static LAUNCH: OnceLock<launch::Launch> = OnceLock::new();

/// How the launcher started this engine: the stove file and where the engine's files were made loadable.
/// (Unit tests run without a launcher and see an empty one.)
pub(crate) fn launch() -> &'static launch::Launch {
    LAUNCH.get_or_init(launch::Launch::default)
}

/// The stove file this process was started from, as the launcher found it (unit tests, which have no launcher:
/// the test program).
pub(crate) fn this_file() -> anyhow::Result<std::path::PathBuf> {
    let exe = &launch().exe;
    if !exe.as_os_str().is_empty() {
        return Ok(exe.clone());
    }
    anyhow::Context::context(std::env::current_exe(), "while finding this executable")
}

/// Called by the launcher with a JSON [`launch::Launch`]; returns the process's exit code.
///
/// # Safety
/// `launch_json` must point to a NUL-terminated string that stays valid for the call.
#[no_mangle]
pub unsafe extern "C" fn stove_main(launch_json: *const c_char) -> c_int {
    // SAFETY: guaranteed by the caller, the launcher, which passes a CString it keeps alive.
    let json = unsafe { CStr::from_ptr(launch_json) };
    let launch = match serde_json::from_slice::<launch::Launch>(json.to_bytes()) {
        Ok(launch) => launch,
        Err(e) => {
            eprintln!("stove: the launcher and the engine disagree ({e}); the file is damaged, copy it again");
            return 1;
        }
    };
    let _ = LAUNCH.set(launch);
    // A panic must not unwind into the launcher's frames, which were built by another copy of Rust's runtime.
    let code = std::panic::catch_unwind(main).map_or(101, c_int::from);
    // The launcher ends the process without the usual exit steps, and this library's standard output is its own.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

/// Ends the process from inside the engine as the launcher does after it returns: output flushed, without the C++
/// static destructors of the engine's libraries (see `launcher::end_after_engine` for why).
pub(crate) fn exit_now(code: i32) -> ! {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let _ = std::io::Write::flush(&mut std::io::stderr());
    // SAFETY: ends the process at once; nothing this process wrote is left unflushed.
    unsafe { libc::_exit(code) }
}

/// `--help`, `--version` and bad arguments: clap's text, then the end of the process.
fn usage_error(error: clap::Error) -> ! {
    let _ = error.print();
    exit_now(error.exit_code())
}

fn main() -> u8 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_with_defaults(&[], &args).unwrap_or_else(|e| usage_error(e));
    if matches!(cli.command, Some(Command::Info(_) | Command::Verify(_) | Command::Keygen(_))) {
        quit_quietly_on_closed_pipe();
    }
    if matches!(cli.command, Some(Command::Pack(_) | Command::Info(_) | Command::Verify(_) | Command::Keygen(_))) {
        engine::set_logging(cli.run.verbose);
    }
    let result = match cli.command {
        Some(Command::Pack(ref pack_args)) => pack::run(pack_args, &cli.run),
        Some(Command::Info(ref info_args)) => info::run(info_args, &cli.run),
        Some(Command::Verify(ref verify_args)) => match verify::run(verify_args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Some(Command::Keygen(ref keygen_args)) => signing::run(keygen_args),
        Some(Command::Worker(ref worker_args)) => {
            engine::set_logging(cli.run.verbose);
            rpc::worker::run(worker_args, &cli.run)
        }
        _ => serve::model_source(&cli.run, !matches!(cli.command, Some(Command::Chat(_)))).and_then(
            |(source, defaults)| {
                // A bundle's default arguments go before the user's, so the user's win.
                let cli = Cli::parse_with_defaults(&defaults, &args).unwrap_or_else(|e| usage_error(e));
                let settings = settings::Settings::new(&cli.run, &source)?;
                // Now, not before: a bundle's default arguments may ask for llama.cpp's log.
                engine::set_logging(settings.verbose);
                verify::before_start(&source, &cli.run)?;
                match cli.command {
                    Some(Command::Chat(chat_args)) => chat::run(&source, &settings, &chat_args),
                    _ => serve::run(&source, &settings),
                }
            },
        ),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("stove: {}", error_chain(&error));
            1
        }
    }
}

/// "what failed: why: the cause", each part once.
fn error_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// `stove info | head` closes the pipe early; like other command-line tools, end quietly instead of
/// panicking on the failed print. (Only for commands that print and exit: the server handles closed sockets.)
fn quit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
