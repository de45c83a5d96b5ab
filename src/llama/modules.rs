//! ggml's backend modules (the CPU variants and GPU backends the launcher placed), through their C entry points:
//! asking one how well it suits this machine, and registering it so llama.cpp lists its devices. Which modules
//! to load is `hardware::backends`' choice; the calls are here.

use std::ffi::{c_int, CString};
use std::path::Path;

/// Asks a module how well it suits this machine, without registering it. Modules without a score function
/// (GPU backends usually have none) count as 1. `why` words a module that does not load.
pub fn score(path: &Path, why: impl Fn(&Path, &libloading::Error) -> String) -> Result<i32, String> {
    // SAFETY: a ggml backend module built with this engine; loading it runs no code that depends on the CPU's
    // features (ggml builds the score function for the baseline, so it can run anywhere).
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| why(path, &e))?;
    // SAFETY: `ggml_backend_score` is declared `int (void)` by GGML_BACKEND_DL_SCORE_IMPL.
    let score = match unsafe { library.get::<unsafe extern "C" fn() -> c_int>(b"ggml_backend_score\0") } {
        // SAFETY: as above; it only reads CPUID (CPU variants) or nothing.
        Ok(function) => unsafe { function() },
        Err(_) => 1,
    };
    Ok(score)
}

/// Registers a module with ggml, so llama.cpp lists its devices; returns how many devices it has.
pub fn register(path: &Path) -> Result<usize, String> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "a NUL byte in the path".to_string())?;
    // SAFETY: a NUL-terminated path that outlives the call; ggml keeps the module loaded until exit.
    let registered = unsafe { llama_cpp_sys_2::ggml_backend_load(c_path.as_ptr()) };
    if registered.is_null() {
        return Err("ggml could not initialise it (run with --verbose to see why)".into());
    }
    // SAFETY: a registry ggml just returned, valid until exit.
    Ok(unsafe { llama_cpp_sys_2::ggml_backend_reg_dev_count(registered) })
}
