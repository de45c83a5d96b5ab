//! What the launcher hands the engine, and how an engine's files are listed inside a stove file.
//!
//! This file is compiled twice: into the launcher (`main.rs`, which must not link llama.cpp) and into the
//! engine library (`lib.rs`). Both sides read and write the same JSON, so it is the one contract between them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The entry point the engine library exports: takes a JSON [`Launch`] and returns the process's exit code.
pub const ENGINE_ENTRY: &[u8] = b"stove_main\0";

/// The engine library itself, the last library loaded (Cargo names the `cdylib` after the crate).
#[cfg(not(windows))]
pub const ENGINE_LIBRARY: &str = "libstove.so";
#[cfg(windows)]
pub const ENGINE_LIBRARY: &str = "stove.dll";

/// llama.cpp's shared libraries in the order they must be loaded: each needs only the ones before it (the
/// dynamic loader then finds them by their SONAME, or on Windows by file name, instead of searching the host).
/// A library llama.cpp adds in a new version makes building from source fail with its name, so it gets a place
/// here.
#[cfg(not(windows))]
pub const LLAMA_LIBRARIES: [&str; 4] = ["libggml-base.so.0", "libggml.so.0", "libllama.so.0", "libllama-common.so.0"];
#[cfg(windows)]
pub const LLAMA_LIBRARIES: [&str; 4] = ["ggml-base.dll", "ggml.dll", "libllama.dll", "libllama-common.dll"];

/// Where an engine's files live inside a stove file's archive, and the list of them.
pub const ARCHIVE_DIR: &str = "engine/";
pub const INDEX_ENTRY: &str = "engine/index.json";

/// The list of an engine's files in an archive, in load order: libraries, then the engine library, then the
/// backend modules ggml loads at run time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineIndex {
    /// The Rust target the engine was built for, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// How many bytes at the start of the stove file are the launcher program, and their SHA-256.
    pub launcher_len: u64,
    pub launcher_sha256: String,
    pub files: Vec<EngineFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineFile {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Hex SHA-256; checked when the files are taken from a per-user cache.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Loaded by the launcher, in order, before the engine.
    Library,
    /// The engine itself (`libstove.so`).
    Engine,
    /// A ggml backend module: a CPU variant or a GPU backend, chosen and loaded by the engine.
    Module,
}

/// How the launcher started the engine.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Launch {
    /// The file the person started: a bundle, an engine-only stove file, or the launcher in a build directory.
    pub exe: PathBuf,
    /// How many bytes at the start of `exe` are the launcher program; its archive, if any, follows.
    pub launcher_len: u64,
    /// The Rust target the launcher was built for.
    pub target: String,
    /// Where the engine's files were made loadable, in words: "memory", "cache DIR", "temporary DIR" or
    /// "build DIR".
    pub placement: String,
    /// Every engine file, with a path the engine can open and load.
    pub files: Vec<PlacedFile>,
    /// A temporary directory the engine removes once its modules are loaded.
    pub cleanup: Option<PathBuf>,
    /// Lines the person should see, e.g. why the engine is not in memory.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacedFile {
    pub name: String,
    pub kind: FileKind,
    pub path: PathBuf,
}

impl Launch {
    pub fn modules(&self) -> impl Iterator<Item = &PlacedFile> {
        self.files.iter().filter(|f| f.kind == FileKind::Module)
    }
}
