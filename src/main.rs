//! stove's launcher: the start of every stove file. It links no llama.cpp; it makes the engine that the file
//! carries loadable and hands over to it (see `launcher`). This file only dispatches.

// Shared with the engine, which uses parts the launcher does not.
#[allow(dead_code)]
mod launch;
mod launcher;

fn main() -> std::process::ExitCode {
    launcher::run()
}
