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
pub const LLAMA_LIBRARIES: [&str; 5] =
    ["libggml-base.so.0", "libggml.so.0", "libllama.so.0", "libllama-common.so.0", "libmtmd.so.0"];
#[cfg(windows)]
pub const LLAMA_LIBRARIES: [&str; 5] =
    ["ggml-base.dll", "ggml.dll", "libllama.dll", "libllama-common.dll", "libmtmd.dll"];

/// Where an engine's files live inside a stove file's archive, and the list of them.
pub const ARCHIVE_DIR: &str = "engine/";
pub const INDEX_ENTRY: &str = "engine/index.json";

/// The list of an engine's files in an archive, in load order: libraries (llama.cpp's, then the GPU runtimes'),
/// then the engine library, then the backend modules ggml loads at run time.
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
    /// A library that only a GPU module needs besides its driver (CUDA's runtime and cuBLAS, which the NVIDIA
    /// driver does not install): loaded by the launcher before the engine, and placed only where that module's
    /// driver is present.
    #[serde(rename = "gpu-runtime")]
    GpuRuntime,
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
    /// Where the engine's files were made loadable.
    pub placement: Placement,
    /// Every engine file, with a path the engine can open and load.
    pub files: Vec<PlacedFile>,
    /// A temporary directory the engine removes once its modules are loaded.
    pub cleanup: Option<PathBuf>,
    /// Lines the person should see, e.g. why the engine is not in memory.
    pub notes: Vec<String>,
    /// GPU modules, and the runtime libraries only they need, that the launcher left where they were because
    /// their driver is not on this machine: they could not run, so copying them out would only slow the start
    /// (the Vulkan module is 30 MB, CUDA's runtime and cuBLAS 600 MB).
    pub absent: Vec<AbsentFile>,
}

/// Where the launcher made the engine's files loadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Memory files (Linux's `memfd`): nothing written to disk. (Also what unit tests, with no launcher, see.)
    #[default]
    Memory,
    /// The verified per-user cache, in this folder.
    Cache(PathBuf),
    /// A temporary folder the engine removes once its modules are loaded.
    Temporary(PathBuf),
    /// Loose files beside a launcher in a build directory.
    Build(PathBuf),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Memory => write!(f, "memory"),
            Placement::Cache(dir) => write!(f, "cache ({})", dir.display()),
            Placement::Temporary(dir) => write!(f, "temporary ({})", dir.display()),
            Placement::Build(dir) => write!(f, "build ({})", dir.display()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbsentFile {
    /// The file's name, e.g. `libggml-vulkan.so`.
    pub name: String,
    pub kind: FileKind,
    /// Why it cannot be used here, e.g. `libvulkan.so.1 is not installed`.
    pub reason: String,
}

/// The library an engine file needs from the machine's GPU driver, by the file's name: a GPU module's, or the
/// CUDA runtime's and cuBLAS's (`libcudart.so.13`, `cublas64_13.dll`); `None` for CPU variants and the rest.
pub fn driver_library(file_name: &str) -> Option<&'static str> {
    if file_name.contains("ggml-vulkan") {
        Some(VULKAN_LOADER)
    } else if ["ggml-cuda", "cudart", "cublas"].iter().any(|part| file_name.contains(part)) {
        Some(CUDA_DRIVER)
    } else {
        None
    }
}

/// The Vulkan loader, which every Vulkan driver installs.
pub const VULKAN_LOADER: &str = if cfg!(windows) { "vulkan-1.dll" } else { "libvulkan.so.1" };
/// The NVIDIA driver's own library, which CUDA's runtime and ggml's CUDA module call into.
pub const CUDA_DRIVER: &str = if cfg!(windows) { "nvcuda.dll" } else { "libcuda.so.1" };

/// The CUDA major version a CUDA runtime library is for, from its file name (`libcudart.so.13`,
/// `cudart64_13.dll`): the NVIDIA driver must support at least that version.
pub fn cuda_runtime_major(file_name: &str) -> Option<u32> {
    let version = file_name
        .strip_prefix("libcudart.so.")
        .or_else(|| file_name.strip_prefix("cudart64_")?.strip_suffix(".dll"))?;
    version.split('.').next()?.parse().ok()
}

/// Why a library could not be loaded, in words a person can act on: "libvulkan.so.1 is not installed" for the
/// usual case of a GPU module on a machine without that GPU's driver. `driver` is the driver library the
/// module needs: Windows does not say which DLL it could not find (error 126), so that one is named.
pub fn load_failure(error: &libloading::Error, driver: Option<&str>) -> String {
    if cfg!(windows) {
        const ERROR_MOD_NOT_FOUND: i32 = 126;
        let os_error = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error);
        match (os_error, driver) {
            // Windows users install these with a GPU's driver, not by name.
            (Some(ERROR_MOD_NOT_FOUND), Some(driver)) => {
                format!("{driver} is not installed (it comes with the GPU's driver)")
            }
            (Some(code), _) => format!("{error}: {}", std::io::Error::from_raw_os_error(code)),
            (None, _) => error.to_string(),
        }
    } else {
        shorten_loader_message(&error.to_string())
    }
}

/// "…/libggml-vulkan.so: libvulkan.so.1: cannot open shared object file: …" → "libvulkan.so.1 is not installed".
fn shorten_loader_message(loader_message: &str) -> String {
    const NOT_FOUND: &str = ": cannot open shared object file";
    match loader_message.split_once(NOT_FOUND) {
        Some((before, _)) => format!("{} is not installed", before.rsplit(": ").next().unwrap_or(before)),
        None => loader_message.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_driver_library_is_named() {
        let message = "/proc/self/fd/9: libvulkan.so.1: cannot open shared object file: No such file or directory";
        assert_eq!(shorten_loader_message(message), "libvulkan.so.1 is not installed");
        assert_eq!(shorten_loader_message("undefined symbol: foo"), "undefined symbol: foo");
    }

    #[test]
    fn gpu_modules_name_their_driver_library() {
        let vulkan = if cfg!(windows) { "vulkan-1.dll" } else { "libvulkan.so.1" };
        assert_eq!(driver_library("libggml-vulkan.so"), Some(vulkan));
        assert_eq!(driver_library("ggml-vulkan.dll"), Some(vulkan));
        assert!(driver_library("libggml-cuda.so").is_some());
        assert_eq!(driver_library("libcublasLt.so.13"), driver_library("libggml-cuda.so"));
        assert_eq!(driver_library("cudart64_13.dll"), driver_library("libggml-cuda.so"));
        assert_eq!(driver_library("libggml-cpu-haswell.so"), None);
        assert_eq!(driver_library("libllama.so.0"), None);
    }

    #[test]
    fn the_cuda_version_a_runtime_needs_comes_from_its_name() {
        assert_eq!(cuda_runtime_major("libcudart.so.13"), Some(13));
        assert_eq!(cuda_runtime_major("libcudart.so.12.8.90"), Some(12));
        assert_eq!(cuda_runtime_major("cudart64_13.dll"), Some(13));
        assert_eq!(cuda_runtime_major("libcublas.so.13"), None);
        assert_eq!(cuda_runtime_major("libggml-cuda.so"), None);
    }
}
