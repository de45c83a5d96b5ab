//! ggml's RPC backend module (`libggml-rpc.so`, `ggml/include/ggml-rpc.h`), through the entry points its
//! registry hands out: serving this machine's devices to other machines (`stove worker`), and adding another
//! machine's devices to this one's (`--worker`). Which devices and which endpoints is `rpc/`'s choice; the
//! calls are here. Both only ever name loopback endpoints: stove's own link carries the traffic between
//! machines (see `rpc/link.rs`).

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// ggml's RPC protocol version, `major.minor.patch` (`RPC_PROTO_*_VERSION` in the ggml-rpc.h this engine
/// was built with; build.rs reads it).
pub const PROTOCOL: &str = env!("STOVE_RPC_PROTOCOL");

/// One device this machine can lend, as ggml names it.
#[derive(Debug, Clone)]
pub struct LocalDevice {
    handle: sys::ggml_backend_dev_t,
    pub name: String,
    pub description: String,
    pub memory_free: u64,
    pub memory_total: u64,
    pub is_gpu: bool,
}

// SAFETY: a device handle is a pointer into ggml's registry, which lives until the process ends and which
// ggml itself uses from any thread.
unsafe impl Send for LocalDevice {}

/// The RPC module's registry, when the engine carries the module and `hardware::backends` loaded it.
fn registry() -> Option<sys::ggml_backend_reg_t> {
    // SAFETY: a NUL-terminated name; ggml returns null or a registry valid until exit.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    (!reg.is_null()).then_some(reg)
}

/// Whether this engine can lend or borrow devices (it carries ggml's RPC module and loaded it).
pub fn available() -> bool {
    registry().is_some()
}

/// Why [`available`] is false, for people.
pub fn unavailable() -> String {
    "this stove file carries no RPC module (libggml-rpc); pack it with an engine built by this version's scripts \
     (scripts/build-env.sh builds it)"
        .to_string()
}

fn entry_point(name: &CStr) -> Result<*mut c_void, String> {
    let reg = registry().ok_or_else(unavailable)?;
    // SAFETY: a registry from ggml and a NUL-terminated name; the address stays valid until exit.
    let address = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if address.is_null() {
        return Err(format!("the RPC module has no {}", name.to_string_lossy()));
    }
    Ok(address)
}

/// The devices a worker lends: every GPU, or the CPU where there is none (what llama.cpp's rpc-server does).
pub fn devices_to_lend() -> Vec<LocalDevice> {
    // SAFETY: reads ggml's device registry, filled by `hardware::backends::load` before any of this runs.
    let count = unsafe { sys::ggml_backend_dev_count() };
    let all: Vec<LocalDevice> = (0..count)
        .map(|i| {
            // SAFETY: an index below ggml's device count; the handle is valid until exit.
            let handle = unsafe { sys::ggml_backend_dev_get(i) };
            device(handle)
        })
        .collect();
    let gpus: Vec<LocalDevice> = all.iter().filter(|d| d.is_gpu).cloned().collect();
    if !gpus.is_empty() {
        return gpus;
    }
    all.into_iter().filter(|d| d.name.eq_ignore_ascii_case("cpu")).take(1).collect()
}

fn device(handle: sys::ggml_backend_dev_t) -> LocalDevice {
    let text = |p: *const c_char| {
        // SAFETY: ggml returns NUL-terminated strings owned by the device, valid until exit.
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: a valid device handle and two places for the answer.
    unsafe { sys::ggml_backend_dev_memory(handle, &mut free, &mut total) };
    // SAFETY: as above.
    let kind = unsafe { sys::ggml_backend_dev_type(handle) };
    // SAFETY: a valid device handle; the strings are the device's own.
    let (name, description) =
        unsafe { (sys::ggml_backend_dev_name(handle), sys::ggml_backend_dev_description(handle)) };
    LocalDevice {
        handle,
        name: text(name),
        description: text(description),
        memory_free: free as u64,
        memory_total: total as u64,
        is_gpu: kind == sys::GGML_BACKEND_DEVICE_TYPE_GPU || kind == sys::GGML_BACKEND_DEVICE_TYPE_IGPU,
    }
}

/// Serves `devices` on `endpoint` (a loopback `127.0.0.1:PORT`) with ggml's RPC server, one client at a time.
/// Returns only when the server could not start (its reason is on standard error). `cache` is ggml's tensor
/// cache: weights sent once are kept there by hash, so a client that loads the same model again sends only
/// the hashes.
pub fn serve(endpoint: &str, cache: Option<&Path>, threads: usize, devices: &[LocalDevice]) -> Result<(), String> {
    type StartServer = unsafe extern "C" fn(*const c_char, *const c_char, usize, usize, *mut sys::ggml_backend_dev_t);
    let start = entry_point(c"ggml_backend_rpc_start_server")?;
    // SAFETY: the address of `ggml_backend_rpc_start_server`, whose signature ggml-rpc.h declares as above.
    let start: StartServer = unsafe { std::mem::transmute::<*mut c_void, StartServer>(start) };
    let endpoint = CString::new(endpoint).map_err(|_| "a NUL byte in the endpoint".to_string())?;
    let cache = match cache {
        Some(dir) => {
            Some(CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| "a NUL byte in --cache".to_string())?)
        }
        None => None,
    };
    let mut handles: Vec<sys::ggml_backend_dev_t> = devices.iter().map(|d| d.handle).collect();
    // SAFETY: NUL-terminated strings and a device array that outlive the call, which runs the server loop.
    unsafe {
        start(
            endpoint.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            handles.len(),
            handles.as_mut_ptr(),
        )
    };
    Err("ggml's RPC server stopped".into())
}

/// Adds the devices of the RPC server at `endpoint` (a loopback `127.0.0.1:PORT` that stove's link carries
/// to a worker) to the ones llama.cpp places layers on, and keeps one connection to it open for the rest of
/// the process: ggml opens a new connection whenever none is held, and once the sandbox is in place no new
/// connection can be opened. Returns ggml's names for the devices (`RPC0`, …).
pub fn add_server(endpoint: &str) -> Result<Vec<String>, String> {
    type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
    let add = entry_point(c"ggml_backend_rpc_add_server")?;
    // SAFETY: the address of `ggml_backend_rpc_add_server`, whose signature ggml-rpc.h declares as above.
    let add: AddServer = unsafe { std::mem::transmute::<*mut c_void, AddServer>(add) };
    let c_endpoint = CString::new(endpoint).map_err(|_| "a NUL byte in the endpoint".to_string())?;
    // SAFETY: a NUL-terminated endpoint; ggml returns null (no devices) or a registry it keeps until exit.
    let reg = unsafe { add(c_endpoint.as_ptr()) };
    if reg.is_null() {
        return Err("it lends no devices".into());
    }
    // SAFETY: a registry ggml made; registering it lists its devices with the others.
    unsafe { sys::ggml_backend_register(reg) };
    // SAFETY: as above.
    let count = unsafe { sys::ggml_backend_reg_dev_count(reg) };
    let mut names = Vec::new();
    for i in 0..count {
        // SAFETY: an index below the registry's device count.
        let handle = unsafe { sys::ggml_backend_reg_dev_get(reg, i) };
        if i == 0 {
            // A backend holds the connection; it is never freed, so ggml keeps using that one connection
            // (opened first, so that asking for the device's memory below uses it too).
            // SAFETY: a device of a registered registry; no parameters.
            let backend = unsafe { sys::ggml_backend_dev_init(handle, std::ptr::null()) };
            if backend.is_null() {
                return Err("ggml could not open a backend on it".into());
            }
        }
        names.push(device(handle).name);
    }
    Ok(names)
}
