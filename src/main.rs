//! stove: one executable holding llama.cpp, a GGUF model and a chat page. This file only dispatches.

mod bundle;
mod chat;
mod cli;
mod engine;
mod gguf;
mod hardware;
mod info;
mod pack;
mod serve;
mod server;
mod signing;
mod verify;

use std::ffi::OsString;
use std::process::ExitCode;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_with_defaults(&[], &args).unwrap_or_else(|e| e.exit());
    if matches!(cli.command, Some(Command::Info(_) | Command::Verify(_) | Command::Keygen(_))) {
        quit_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Some(Command::Pack(ref pack_args)) => pack::run(pack_args, &cli.run),
        Some(Command::Info(ref info_args)) => info::run(info_args),
        Some(Command::Verify(ref verify_args)) => match verify::run(verify_args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Some(Command::Keygen(ref keygen_args)) => signing::run(keygen_args),
        _ => serve::model_source(&cli.run).and_then(|(source, defaults)| {
            // A bundle's default arguments go before the user's, so the user's win.
            let cli = Cli::parse_with_defaults(&defaults, &args).unwrap_or_else(|e| e.exit());
            verify::before_start(&source, &cli.run)?;
            match cli.command {
                Some(Command::Chat(chat_args)) => chat::run(&source, &cli.run, &chat_args),
                _ => serve::run(&source, &cli.run),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stove: {}", error_chain(&error));
            ExitCode::FAILURE
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
