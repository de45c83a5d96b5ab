//! The launcher: the small program at the start of every stove file.
//!
//! llama.cpp's CPU variants and GPU backends are shared modules, and the engine that uses them is itself a shared
//! library (`libstove.so`) that needs llama.cpp's libraries. None of that can be linked into one executable, so
//! the launcher, which links no llama.cpp, carries them in the archive at the end of its own file: it makes them
//! loadable ([`placement`]: in memory, else a verified per-user cache, else a temporary directory), loads
//! llama.cpp's libraries and the engine in order, and calls the engine with a [`Launch`] saying where
//! everything is. Run from a build directory (`cargo build`), it takes the files the build left there instead.

mod drivers;
#[cfg(target_os = "linux")]
mod memory;
mod placement;

use std::ffi::{c_char, c_int, CString};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::launch::{
    driver_library, AbsentFile, EngineIndex, FileKind, Launch, PlacedFile, Placement, ENGINE_ENTRY, ENGINE_LIBRARY,
    INDEX_ENTRY, LLAMA_LIBRARIES,
};

/// Where `cargo build` left llama.cpp's libraries and backend modules (from llama-cpp-sys-2, via build.rs).
const BUILD_LIBRARY_DIR: &str = env!("STOVE_BUILD_LIBRARY_DIR");
const BUILD_MODULE_DIR: &str = env!("STOVE_BUILD_MODULE_DIR");

type EngineEntry = unsafe extern "C" fn(*const c_char) -> c_int;

pub fn run() -> ExitCode {
    match start() {
        Ok(code) => end_after_engine(code),
        Err(message) => {
            eprintln!("stove: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the process once the engine has returned, without running the C++ static destructors of the engine's
/// libraries: each carries its own hidden C++ runtime, and tearing those down in exit's order is undefined
/// (on aarch64 a `std::regex` in libllama freed its locale into another runtime's heap and aborted). Nothing
/// needs them: the engine has flushed and closed what it wrote before returning.
fn end_after_engine(code: c_int) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; every file this process wrote is already closed or synced.
    unsafe { libc::_exit(code) }
}

fn start() -> Result<c_int, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable's own file: {e}"))?;
    let mut launch = match open_archive(&exe)? {
        Some((archive, mut index, index_json)) => {
            let absent = drivers::leave_out_unusable(&mut index.files);
            Launch { absent, ..placement::place(&exe, archive, &index, &index_json)? }
        }
        None => from_build_directory(&exe)?,
    };
    run_engine(&mut launch)
}

/// A stove file's archive, its engine index, and the index's exact bytes.
type Opened = (zip::ZipArchive<File>, EngineIndex, Vec<u8>);

/// The archive at the end of `exe` and its engine index; `None` for a launcher with no archive (a build).
fn open_archive(exe: &Path) -> Result<Option<Opened>, String> {
    let file = File::open(exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(archive) => archive,
        Err(_) if built_engine_library(exe).is_some() => return Ok(None),
        Err(e) => {
            return Err(format!(
                "{} is truncated or damaged: the archive holding its engine cannot be read ({e}). It was \
                 probably copied incompletely; copy it again from the original. (A stove built from source runs \
                 only beside its {ENGINE_LIBRARY}; `stove pack --engine-only -o FILE` makes one that runs anywhere.)",
                exe.display()
            ))
        }
    };
    let mut json = Vec::new();
    let read = archive.by_name(INDEX_ENTRY).map_err(|e| e.to_string()).and_then(|entry| {
        entry.take(1 << 20).read_to_end(&mut json).map_err(|e| e.to_string())?;
        serde_json::from_slice::<EngineIndex>(&json).map_err(|e| e.to_string())
    });
    let index = read.map_err(|e| {
        format!(
            "{} carries no usable engine ({INDEX_ENTRY}: {e}); it may come from an older stove or be damaged. \
             Pack it again with this stove",
            exe.display()
        )
    })?;
    let target = env!("STOVE_TARGET");
    if index.target != target {
        return Err(format!(
            "{} carries an engine for {}, but this launcher is for {target}; the file is damaged",
            exe.display(),
            index.target
        ));
    }
    Ok(Some((archive, index, json)))
}

/// The engine files a `cargo build` left: the engine library beside the launcher, llama.cpp's beside its build.
fn from_build_directory(exe: &Path) -> Result<Launch, String> {
    let library_dir = Path::new(BUILD_LIBRARY_DIR);
    let mut files: Vec<PlacedFile> = LLAMA_LIBRARIES
        .iter()
        .map(|name| PlacedFile { name: name.to_string(), kind: FileKind::Library, path: library_dir.join(name) })
        .collect();
    // CUDA's runtime and cuBLAS, from the toolkit the CUDA module was built with (build.rs names them).
    for path in option_env!("STOVE_BUILD_GPU_RUNTIME").map(std::env::split_paths).into_iter().flatten() {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        files.push(PlacedFile { name, kind: FileKind::GpuRuntime, path });
    }
    let engine = built_engine_library(exe)
        .ok_or(format!("{ENGINE_LIBRARY} is missing; build stove again (`cargo build --release`)"))?;
    files.push(PlacedFile { name: ENGINE_LIBRARY.into(), kind: FileKind::Engine, path: engine });
    let mut modules: Vec<PathBuf> = std::fs::read_dir(BUILD_MODULE_DIR)
        .map_err(|e| format!("cannot list the backend modules in {BUILD_MODULE_DIR}: {e}; build stove again"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == std::env::consts::DLL_EXTENSION))
        .collect();
    modules.sort();
    for path in modules {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        files.push(PlacedFile { name, kind: FileKind::Module, path });
    }
    if let Some(missing) = files.iter().find(|f| !f.path.exists()) {
        return Err(format!("{} is missing; build stove again (`cargo build --release`)", missing.path.display()));
    }
    let launcher_len = std::fs::metadata(exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?.len();
    Ok(Launch {
        exe: exe.to_path_buf(),
        launcher_len,
        target: env!("STOVE_TARGET").into(),
        placement: Placement::Build(library_dir.to_path_buf()),
        files,
        cleanup: None,
        notes: Vec::new(),
        absent: Vec::new(),
    })
}

/// The `libstove.so` of the build this launcher belongs to: `cargo build` puts it beside the launcher, `cargo test`
/// leaves it in `deps/` (Cargo copies up only what was asked for), so the newer of the two.
fn built_engine_library(exe: &Path) -> Option<PathBuf> {
    let beside = exe.with_file_name(ENGINE_LIBRARY);
    let in_deps = exe.parent()?.join("deps").join(ENGINE_LIBRARY);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    [beside, in_deps].into_iter().filter_map(|path| Some((modified(&path)?, path))).max().map(|(_, path)| path)
}

/// Loads llama.cpp's libraries, the GPU runtimes and the engine, in order, and runs the engine. They stay loaded
/// until exit.
fn run_engine(launch: &mut Launch) -> Result<c_int, String> {
    let cannot_load = |file: &PlacedFile, e: libloading::Error| {
        format!("cannot load the engine's {} ({}): {e}", file.name, file.path.display())
    };
    for file in launch.files.iter().filter(|f| f.kind == FileKind::Library) {
        // Never unloaded: everything after depends on it.
        std::mem::forget(load_library(&file.path).map_err(|e| cannot_load(file, e))?);
    }
    load_gpu_runtimes(launch);
    let file = launch.files.iter().find(|f| f.kind == FileKind::Engine);
    let file = file.ok_or("the engine library is missing from the engine's files")?;
    let engine = load_library(&file.path).map_err(|e| cannot_load(file, e))?;
    // SAFETY: `stove_main` is declared in lib.rs with exactly this signature.
    let entry = unsafe { engine.get::<EngineEntry>(ENGINE_ENTRY) }
        .map_err(|e| format!("the engine library has no entry point: {e}"))?;
    let json = serde_json::to_string(launch).map_err(|e| e.to_string())?;
    let json = CString::new(json).map_err(|_| "a path holds a NUL byte".to_string())?;
    // SAFETY: a NUL-terminated string that outlives the call, which is the whole run of the engine.
    let code = unsafe { entry(json.as_ptr()) };
    // The engine's threads may still run until exit; its code must stay mapped.
    std::mem::forget(engine);
    Ok(code)
}

/// Loads the libraries GPU modules need besides their driver (CUDA's runtime and cuBLAS), so the module finds
/// them by SONAME. One that cannot load here takes its GPU module out of the launch with it: the CPU still runs.
fn load_gpu_runtimes(launch: &mut Launch) {
    let mut failed = None;
    for file in launch.files.iter().filter(|f| f.kind == FileKind::GpuRuntime) {
        match load_library(&file.path) {
            Ok(library) => std::mem::forget(library),
            Err(e) => {
                let reason = format!("cannot load {}: {}", file.name, crate::launch::load_failure(&e, None));
                failed = Some((driver_library(&file.name), reason));
                break;
            }
        }
    }
    let Some((driver, reason)) = failed else { return };
    // The runtimes, and the GPU module of the same driver (never a CPU variant: those have none).
    let (unusable, usable): (Vec<PlacedFile>, Vec<PlacedFile>) =
        std::mem::take(&mut launch.files).into_iter().partition(|f| {
            f.kind == FileKind::GpuRuntime
                || (f.kind == FileKind::Module && driver.is_some() && driver_library(&f.name) == driver)
        });
    launch.files = usable;
    launch.absent.extend(unusable.into_iter().map(|f| AbsentFile {
        name: f.name,
        kind: f.kind,
        reason: reason.clone(),
    }));
}

/// Loads one of the engine's libraries so that what loads later finds it instead of searching the host.
#[cfg(unix)]
fn load_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // RTLD_GLOBAL, as if linked: what loads later (the engine, ggml's modules) finds these by SONAME.
    // SAFETY: these are stove's own llama.cpp libraries and engine, built together; loading runs their
    // initialisers, which only set up their own state.
    unsafe { libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.map(Into::into)
}

/// Loads one of the engine's DLLs. Windows matches a DLL's imports by file name against the DLLs already loaded,
/// so loading them in order is what lets the engine find llama.cpp's; the rest of an import is searched for only
/// in the DLL's own folder and System32, never the current directory or PATH.
#[cfg(windows)]
fn load_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::windows::{Library, LOAD_LIBRARY_SEARCH_DEFAULT_DIRS, LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR};
    // SAFETY: as on Unix: stove's own DLLs, built together, whose initialisers only set up their own state.
    unsafe { Library::load_with_flags(path, LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS) }
        .map(Into::into)
}
