//! Choosing and loading ggml's backend modules, once per process: the CPU variant that ggml's own score
//! rates best for this processor, and each GPU backend whose runtime this machine has.
//!
//! The modules come from the launcher (see [`crate::launch`]). Each CPU variant (`libggml-cpu-haswell.so`, …)
//! exports `ggml_backend_score`, which returns 0 when this processor lacks an instruction the variant uses and
//! otherwise a higher number the more it uses; that is what ggml's own `ggml_backend_load_best` does, here
//! over files that may live in memory rather than in one directory.

use std::path::Path;
use std::sync::OnceLock;

use serde::Serialize;

use crate::launch::{FileKind, PlacedFile};
use crate::llama::modules;

/// `--gpu`: which GPU backend may be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GpuChoice {
    /// CUDA when it finds a GPU (it is faster on NVIDIA), else Vulkan; never both for the same GPU.
    #[default]
    Auto,
    /// The CPU only.
    None,
    Vulkan,
    Cuda,
}

impl GpuChoice {
    /// The one GPU module this choice names (`--gpu vulkan`: `vulkan`, the module's short name).
    fn named_module(self) -> Option<&'static str> {
        match self {
            GpuChoice::Vulkan => Some("vulkan"),
            GpuChoice::Cuda => Some("cuda"),
            GpuChoice::Auto | GpuChoice::None => None,
        }
    }

    fn allows(self, module: &str) -> bool {
        match self {
            GpuChoice::Auto => true,
            GpuChoice::None => false,
            named => named.named_module() == Some(module),
        }
    }
}

/// What was loaded, and why each module that was not is not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backends {
    /// The CPU variant in use, e.g. `haswell`; `None` when the engine has no CPU modules (unit tests).
    pub cpu_variant: Option<String>,
    /// Every module and what became of it, in the engine's order.
    pub modules: Vec<ModuleState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleState {
    /// The module's short name: `cpu-haswell`, `vulkan`, `cuda`.
    pub name: String,
    pub loaded: bool,
    /// ggml's rating of the module for this machine (0: cannot run here), when the module has one.
    pub score: Option<i32>,
    /// Why it is not loaded, in a few words.
    pub reason: Option<String>,
}

impl Backends {
    /// The GPU modules that could not be used, with the reason: one line each for the person starting stove.
    pub fn unused_gpu_modules(&self) -> impl Iterator<Item = &ModuleState> {
        self.modules.iter().filter(|m| !m.name.starts_with("cpu") && m.name != RPC_MODULE && !m.loaded)
    }
}

static LOADED: OnceLock<Backends> = OnceLock::new();

/// Loads the best CPU variant and the GPU backends `gpu` allows and this machine can run, once per process.
/// A GPU backend named explicitly (`--gpu vulkan`) that cannot be used is an error naming why.
pub fn load(gpu: GpuChoice) -> Result<&'static Backends, String> {
    let backends = LOADED.get_or_init(|| load_with(gpu));
    let Some(wanted) = gpu.named_module() else { return Ok(backends) };
    match backends.modules.iter().find(|m| m.name == wanted) {
        Some(module) if module.loaded => Ok(backends),
        Some(module) => Err(format!(
            "--gpu {wanted}: cannot be used here: {}. Start with --gpu auto or --gpu none",
            module.reason.as_deref().unwrap_or("unknown")
        )),
        None => Err(format!(
            "--gpu {wanted}: this stove file carries no {wanted} module. Start with --gpu auto or --gpu none, or \
             pack with an engine built with it"
        )),
    }
}

/// The backends `load` chose at start with the person's `--gpu`. Every command that reaches llama.cpp
/// (`serve`, `chat`, `info`) calls `load` first; reaching here before it is a bug in stove, named as such
/// rather than quietly loading with `--gpu auto`.
pub fn current() -> &'static Backends {
    LOADED.get().expect("hardware::backends::load runs before anything asks llama.cpp for its devices")
}

fn load_with(gpu: GpuChoice) -> Backends {
    let launch = crate::launch();
    let mut backends = load_modules(launch.modules(), gpu);
    // GPU modules the launcher did not place, because their driver is missing here (their runtime libraries
    // went with them and need no line of their own).
    let absent_modules = launch.absent.iter().filter(|absent| absent.kind == FileKind::Module);
    backends.modules.extend(absent_modules.map(|absent| ModuleState {
        name: short_name(&absent.name),
        loaded: false,
        score: None,
        reason: Some(absent.reason.clone()),
    }));
    // The modules are mapped now; a temporary copy of them is no longer needed.
    if let Some(dir) = &launch.cleanup {
        let _ = std::fs::remove_dir_all(dir);
    }
    release_unused(&launch.files, &backends);
    backends
}

fn load_modules<'a>(modules: impl Iterator<Item = &'a PlacedFile>, gpu: GpuChoice) -> Backends {
    let mut backends = Backends::default();
    let mut best: Option<(i32, &Path, String)> = None;
    let mut gpu_modules = Vec::new();
    for module in modules {
        let name = short_name(&module.name);
        if name == RPC_MODULE {
            // ggml's RPC backend has no devices of its own until `--worker` adds a worker's (`rpc/`), and
            // `stove worker` serves with it; so it is always loaded, and never counts as a GPU.
            let state = match modules::register(&module.path) {
                Ok(_) => ModuleState { name, loaded: true, score: None, reason: None },
                Err(reason) => ModuleState { name, loaded: false, score: None, reason: Some(reason) },
            };
            backends.modules.push(state);
            continue;
        }
        if !is_cpu_variant(&module.name) {
            gpu_modules.push((name, module.path.as_path()));
            continue;
        }
        let state = match modules::score(&module.path, why_not_loadable) {
            Ok(score) => {
                if score > 0 && best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                    best = Some((score, &module.path, name.clone()));
                }
                let reason = (score == 0).then(|| "this processor lacks instructions it uses".to_string());
                ModuleState { name, loaded: false, score: Some(score), reason }
            }
            Err(reason) => ModuleState { name, loaded: false, score: None, reason: Some(reason) },
        };
        backends.modules.push(state);
    }
    if let Some((_, path, name)) = best {
        match modules::register(path) {
            Ok(_) => {
                for state in backends.modules.iter_mut().filter(|m| m.name == name) {
                    state.loaded = true;
                }
                backends.cpu_variant = Some(name.trim_start_matches("cpu-").to_string());
            }
            Err(reason) => {
                for state in backends.modules.iter_mut().filter(|m| m.name == name) {
                    state.reason = Some(reason.clone());
                }
            }
        }
    }
    // CUDA first: on an NVIDIA GPU it is the faster of the two, and Vulkan would list the same GPU again.
    gpu_modules.sort_by_key(|(name, _)| name != "cuda");
    let mut gpu_in_use: Option<String> = None;
    for (name, path) in gpu_modules {
        let not_used =
            |reason: String| ModuleState { name: name.clone(), loaded: false, score: None, reason: Some(reason) };
        let state = if !gpu.allows(&name) {
            not_used(format!("--gpu {}", format!("{gpu:?}").to_lowercase()))
        } else if let (GpuChoice::Auto, Some(other)) = (gpu, &gpu_in_use) {
            not_used(format!("{other} is used for the GPU"))
        } else {
            // Loading fails right away when the module's driver library (libvulkan.so.1, libcuda.so.1) is not
            // installed; that is the everyday case on machines without that GPU, not an error.
            match modules::score(path, why_not_loadable) {
                Err(reason) => not_used(reason),
                Ok(0) => not_used("no usable device".into()),
                Ok(_) => match modules::register(path) {
                    Ok(0) => not_used("it found no GPU".into()),
                    Ok(_) => {
                        gpu_in_use = Some(name.clone());
                        ModuleState { name: name.clone(), loaded: true, score: None, reason: None }
                    }
                    Err(reason) => not_used(reason),
                },
            }
        };
        backends.modules.push(state);
    }
    backends
}

/// Closes the memory files of modules that were not loaded (the other CPU variants: about 20 MB), so their
/// memory is returned. Nothing reads them again: packing re-reads the stove file itself.
fn release_unused(files: &[PlacedFile], backends: &Backends) {
    for file in files {
        let unused = backends.modules.iter().any(|m| !m.loaded && short_name(&file.name) == m.name);
        let fd = file.path.to_str().and_then(|p| p.strip_prefix("/proc/self/fd/")).and_then(|n| n.parse().ok());
        if let (true, Some(fd)) = (unused, fd) {
            // SAFETY: the launcher opened this descriptor for this module alone and handed it to the engine;
            // the module was unloaded after scoring, so nothing maps or reads it.
            unsafe { libc::close(fd) };
        }
    }
}

/// The short name of ggml's RPC backend module (`libggml-rpc.so`), which lends and borrows devices between
/// machines (`rpc/`): neither a CPU variant nor a GPU backend.
pub const RPC_MODULE: &str = "rpc";

/// Whether an engine module file is ggml's RPC backend (`libggml-rpc.so`, `ggml-rpc.dll`).
pub fn is_rpc_module(file_name: &str) -> bool {
    short_name(file_name) == RPC_MODULE
}

/// Whether an engine module file is one of ggml's CPU variants (`libggml-cpu-haswell.so`, `ggml-cpu-haswell.dll`)
/// rather than a GPU backend (`libggml-vulkan.so`, `libggml-cuda.so`).
pub fn is_cpu_variant(file_name: &str) -> bool {
    short_name(file_name).starts_with("cpu")
}

/// `libggml-cpu-haswell.so` or `ggml-cpu-haswell.dll` → `cpu-haswell`; `libggml-vulkan.so` → `vulkan`.
fn short_name(file_name: &str) -> String {
    let name = file_name.strip_prefix("lib").unwrap_or(file_name);
    let name = name.strip_prefix("ggml-").unwrap_or(name);
    let name = name.split(".so").next().unwrap_or(name);
    name.strip_suffix(".dll").unwrap_or(name).to_string()
}

/// Why a module could not be loaded; for a GPU module, usually that its driver library is missing.
fn why_not_loadable(module: &Path, error: &libloading::Error) -> String {
    let file_name = module.file_name().unwrap_or_default().to_string_lossy();
    crate::launch::load_failure(error, crate::launch::driver_library(&file_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_shortened() {
        assert_eq!(short_name("libggml-cpu-haswell.so"), "cpu-haswell");
        assert_eq!(short_name("libggml-vulkan.so"), "vulkan");
        assert_eq!(short_name("libggml-cuda.so"), "cuda");
        assert_eq!(short_name("ggml-cpu-haswell.dll"), "cpu-haswell");
        assert_eq!(short_name("libggml-cpu-x64.dll"), "cpu-x64");
        assert!(is_cpu_variant("ggml-cpu-haswell.dll") && !is_cpu_variant("ggml-vulkan.dll"));
        assert!(is_rpc_module("libggml-rpc.so") && is_rpc_module("ggml-rpc.dll") && !is_rpc_module("libggml-cuda.so"));
    }
}
