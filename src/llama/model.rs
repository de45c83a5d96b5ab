//! Loading a GGUF that starts at an offset inside a larger file, which llama-cpp-2 0.1.160 does not wrap, and
//! the few ggml tables stove reads (system info, tensor type sizes).

use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("cannot seek to byte {offset} of {path}: {source}")]
    Seek { path: String, offset: u64, source: std::io::Error },
    #[error("llama.cpp could not load the model in {path} (run with --verbose to see why)")]
    Rejected { path: String },
}

// `transmute` below turns the pointer into a `LlamaModel`; that is sound only while `LlamaModel` stays
// `#[repr(transparent)]` over `Ptr<llama_model>`, itself `#[repr(transparent)]` over `NonNull<llama_model>`.
// This checks the size at compile time; the layout is part of llama-cpp-2's public declaration.
const _: () = assert!(size_of::<LlamaModel>() == size_of::<NonNull<llama_cpp_sys_2::llama_model>>());

/// Loads the GGUF that starts at byte `offset` of `path`, memory-mapping its weights from that file when
/// `use_mmap` is set (llama.cpp maps when the GGUF's data section is 32-byte aligned in the file).
///
/// `_backend` proves llama.cpp was initialised, as `LlamaModel::load_from_file` asks.
pub fn load_model_at(
    _backend: &LlamaBackend,
    path: &Path,
    offset: u64,
    use_mmap: bool,
    n_gpu_layers: i32,
) -> Result<LlamaModel, LoadError> {
    let file = open_at(path, offset)?;

    // SAFETY: default params from llama.cpp, two plain fields changed; no callbacks or pointers are set.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_default_params() };
    params.load_mode =
        if use_mmap { llama_cpp_sys_2::LLAMA_LOAD_MODE_MMAP } else { llama_cpp_sys_2::LLAMA_LOAD_MODE_NONE };
    params.n_gpu_layers = n_gpu_layers;
    // SAFETY: `file` is open and positioned at the GGUF. llama.cpp reads from the current position and does not
    // take ownership of the FILE (llama_file's `owns_fp` is false for this constructor); the model it returns
    // keeps its own mapping of the file, not the FILE*, so closing it afterwards is fine. `libc::FILE` and
    // bindgen's `FILE` are the same C type.
    let model = unsafe { llama_cpp_sys_2::llama_model_load_from_file_ptr(file.cast(), params) };
    // SAFETY: closed exactly once, after llama.cpp is done with it.
    unsafe { libc::fclose(file) };

    let model = NonNull::new(model).ok_or_else(|| LoadError::Rejected { path: path.display().to_string() })?;
    // SAFETY: layout checked above; `model` is a live llama_model that nothing else owns, and `LlamaModel`'s
    // Drop frees it with llama_model_free, which is how a model from this loader must be freed.
    Ok(unsafe { std::mem::transmute::<NonNull<llama_cpp_sys_2::llama_model>, LlamaModel>(model) })
}

/// Loads only the vocabulary of the GGUF at byte `offset` of `path` (no weights), to compare it with another's.
pub fn load_vocabulary_at(path: &Path, offset: u64) -> Result<LlamaModel, LoadError> {
    load_without_weights(path, offset, |params| params.vocab_only = true)
}

/// Loads the GGUF at byte `offset` of `path` as llama.cpp describes it (vocabulary and sizes: what a projector
/// is checked against) without reading or allocating its weights (`no_alloc`).
pub fn load_description_at(path: &Path, offset: u64) -> Result<LlamaModel, LoadError> {
    load_without_weights(path, offset, |params| {
        // Mapping is what no_alloc leaves out; asked for, llama.cpp would assert.
        params.no_alloc = true;
        params.load_mode = llama_cpp_sys_2::LLAMA_LOAD_MODE_NONE;
        params.n_gpu_layers = 0;
    })
}

fn load_without_weights(
    path: &Path,
    offset: u64,
    set: impl FnOnce(&mut llama_cpp_sys_2::llama_model_params),
) -> Result<LlamaModel, LoadError> {
    let file = open_at(path, offset)?;
    // SAFETY: default params from llama.cpp with flags that skip the weights set; no callbacks or pointers.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_default_params() };
    set(&mut params);
    // SAFETY: as in `load_model_at`: the FILE is positioned at the GGUF and closed after llama.cpp is done.
    let model = unsafe { llama_cpp_sys_2::llama_model_load_from_file_ptr(file.cast(), params) };
    unsafe { libc::fclose(file) };
    let model = NonNull::new(model).ok_or_else(|| LoadError::Rejected { path: path.display().to_string() })?;
    // SAFETY: as in `load_model_at`.
    Ok(unsafe { std::mem::transmute::<NonNull<llama_cpp_sys_2::llama_model>, LlamaModel>(model) })
}

/// The `llama_model` behind a `LlamaModel`, for llama.cpp calls llama-cpp-2 does not wrap (the chat layer).
pub(super) fn raw_model(model: &LlamaModel) -> *const llama_cpp_sys_2::llama_model {
    // SAFETY: `LlamaModel` is a transparent wrapper over `NonNull<llama_model>` (checked above), so a reference
    // to it is a reference to that pointer. The pointer stays valid while `model` is borrowed.
    unsafe { *(model as *const LlamaModel).cast::<NonNull<llama_cpp_sys_2::llama_model>>() }.as_ptr()
}

/// Opens `path` for reading with the C runtime llama.cpp uses and positions it at `offset`.
fn open_at(path: &Path, offset: u64) -> Result<*mut libc::FILE, LoadError> {
    let shown = || path.display().to_string();
    let file = c_runtime::open(path).map_err(|source| LoadError::Open { path: shown(), source })?;
    // SAFETY: `file` is a valid FILE* from `open`, not yet closed.
    if let Err(source) = unsafe { c_runtime::seek(file, offset) } {
        // SAFETY: as above; closed exactly once.
        unsafe { libc::fclose(file) };
        return Err(LoadError::Seek { path: shown(), offset, source });
    }
    Ok(file)
}

#[cfg(unix)]
mod c_runtime {
    use std::io::{Error, ErrorKind};
    use std::path::Path;

    pub fn open(path: &Path) -> Result<*mut libc::FILE, Error> {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "the path contains a NUL byte"))?;
        // SAFETY: `c_path` and the mode are NUL-terminated strings that outlive the call.
        let file = unsafe { libc::fopen(c_path.as_ptr(), c"rb".as_ptr()) };
        if file.is_null() {
            return Err(Error::last_os_error());
        }
        Ok(file)
    }

    /// # Safety
    /// `file` must be an open FILE*.
    pub unsafe fn seek(file: *mut libc::FILE, offset: u64) -> Result<(), Error> {
        let offset =
            libc::off_t::try_from(offset).map_err(|_| Error::new(ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: guaranteed by the caller.
        match unsafe { libc::fseeko(file, offset, libc::SEEK_SET) } {
            0 => Ok(()),
            _ => Err(Error::last_os_error()),
        }
    }
}

/// Windows: the path as UTF-16 (`fopen` would read it in the ANSI code page), and a 64-bit seek (`fseek` takes
/// a 32-bit `long` there). Both come from msvcrt, the C runtime that mingw-w64 built llama.cpp against.
#[cfg(windows)]
mod c_runtime {
    use std::io::{Error, ErrorKind};
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;

    extern "C" {
        fn _wfopen(filename: *const u16, mode: *const u16) -> *mut libc::FILE;
        fn _fseeki64(stream: *mut libc::FILE, offset: i64, origin: libc::c_int) -> libc::c_int;
    }

    pub fn open(path: &Path) -> Result<*mut libc::FILE, Error> {
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
        if wide[..wide.len() - 1].contains(&0) {
            return Err(Error::new(ErrorKind::InvalidInput, "the path contains a NUL character"));
        }
        let mode: Vec<u16> = "rb\0".encode_utf16().collect();
        // SAFETY: both strings are NUL-terminated UTF-16 that outlive the call.
        let file = unsafe { _wfopen(wide.as_ptr(), mode.as_ptr()) };
        if file.is_null() {
            return Err(Error::last_os_error());
        }
        Ok(file)
    }

    /// # Safety
    /// `file` must be an open FILE*.
    pub unsafe fn seek(file: *mut libc::FILE, offset: u64) -> Result<(), Error> {
        let offset = i64::try_from(offset).map_err(|_| Error::new(ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: guaranteed by the caller.
        match unsafe { _fseeki64(file, offset, libc::SEEK_SET) } {
            0 => Ok(()),
            _ => Err(Error::last_os_error()),
        }
    }
}

/// llama.cpp's one-line report of its backends and the features each was built with, for example
/// `CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | ...`.
pub fn system_info() -> String {
    // SAFETY: llama_print_system_info takes no arguments and returns a NUL-terminated string in a static
    // buffer that stays valid until the next call; it is copied out at once. Callers are the engine thread
    // after the backend is initialised and `stove info`, never two at a time.
    let text = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    text.to_string_lossy().into_owned()
}

/// How ggml stores tensor type `type_id`: (elements per block, bytes per block); `None` for a type this
/// ggml does not know (out of range, or a retired one whose table entry is empty).
pub fn tensor_type_layout(type_id: u32) -> Option<(u64, u64)> {
    if type_id >= llama_cpp_sys_2::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: both functions index ggml's static type table, in range as checked above; no state is touched.
    let (block, size) = unsafe { (llama_cpp_sys_2::ggml_blck_size(type_id), llama_cpp_sys_2::ggml_type_size(type_id)) };
    (block > 0 && size > 0).then_some((block as u64, size as u64))
}
