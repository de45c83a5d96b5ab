//! Which GPU drivers this machine has. A GPU module, and the runtime libraries only it needs, are placed only
//! where the driver's library loads (and, for CUDA, supports the CUDA version the engine's runtime was built
//! for): on any other machine they could not run, and copying them out would only slow every start.

use std::collections::HashMap;
use std::ffi::c_int;

use crate::launch::{cuda_runtime_major, driver_library, load_failure, AbsentFile, EngineFile, FileKind, CUDA_DRIVER};

/// The driver libraries tried so far: whether each can be used, and why not.
struct Drivers {
    checked: HashMap<&'static str, Result<(), String>>,
    /// The CUDA major version the engine's CUDA runtime needs from the driver, when it carries one.
    cuda_major: Option<u32>,
}

/// Takes out of an engine's `files` those whose driver cannot be used here, and says why for each.
pub(super) fn leave_out_unusable(files: &mut Vec<EngineFile>) -> Vec<AbsentFile> {
    let mut drivers = Drivers::for_files(files.iter().map(|f| f.name.as_str()));
    let mut absent = Vec::new();
    files.retain(|file| match drivers.why_unusable(&file.name, file.kind) {
        None => true,
        Some(reason) => {
            absent.push(AbsentFile { name: file.name.clone(), kind: file.kind, reason });
            false
        }
    });
    absent
}

impl Drivers {
    fn for_files<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Drivers { checked: HashMap::new(), cuda_major: names.into_iter().find_map(cuda_runtime_major) }
    }

    /// Why a GPU module or GPU runtime library cannot be used on this machine; `None` when it can, and for every
    /// other file. A driver library that loads stays loaded: the module needs it next.
    fn why_unusable(&mut self, file_name: &str, kind: FileKind) -> Option<String> {
        if !matches!(kind, FileKind::Module | FileKind::GpuRuntime) {
            return None;
        }
        let driver = driver_library(file_name)?;
        let cuda_major = self.cuda_major;
        self.checked.entry(driver).or_insert_with(|| check(driver, cuda_major)).as_ref().err().cloned()
    }
}

fn check(driver: &'static str, cuda_major: Option<u32>) -> Result<(), String> {
    // SAFETY: a GPU driver's own library, which the module would load anyway; its initialisers only set up its
    // own state.
    let library = unsafe { libloading::Library::new(driver) }.map_err(|e| load_failure(&e, Some(driver)))?;
    let result = match cuda_major.filter(|_| driver == CUDA_DRIVER) {
        Some(needed) => cuda_driver_supports(&library, needed),
        None => Ok(()),
    };
    std::mem::forget(library);
    result
}

/// Whether the NVIDIA driver and its GPUs can run a CUDA module built for CUDA `needed`: the driver must support
/// that CUDA (an older one loads, but CUDA's runtime then finds no GPU, after 600 MB of runtime libraries were
/// copied out for nothing), and every GPU must be one that CUDA still compiles for (on an older one the module's
/// first kernel fails, and ggml stops the process).
fn cuda_driver_supports(driver: &libloading::Library, needed: u32) -> Result<(), String> {
    type GetInt = unsafe extern "C" fn(*mut c_int) -> c_int;
    type Init = unsafe extern "C" fn(u32) -> c_int;
    type DeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type DeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    const NO_DEVICE: c_int = 100;
    const COMPUTE_CAPABILITY_MAJOR: c_int = 75;
    const COMPUTE_CAPABILITY_MINOR: c_int = 76;
    let missing = |name: &str| format!("the NVIDIA driver's library has no {name}; reinstall the driver");
    // SAFETY: the driver API's signatures, unchanged since CUDA 2 (cuDriverGetVersion may be called before
    // cuInit; the others after it). Each writes only to the locals passed in, which outlive the calls. cuInit runs
    // once per process; the CUDA module's own start then finds the driver ready.
    unsafe {
        let get_version = driver.get::<GetInt>(b"cuDriverGetVersion\0").map_err(|_| missing("cuDriverGetVersion"))?;
        let mut version = 0;
        match get_version(&mut version) {
            0 => too_old(version, needed).map_or(Ok(()), Err)?,
            status => return Err(format!("the NVIDIA driver did not say which CUDA it supports (error {status})")),
        }
        let init = driver.get::<Init>(b"cuInit\0").map_err(|_| missing("cuInit"))?;
        let device_count = driver.get::<GetInt>(b"cuDeviceGetCount\0").map_err(|_| missing("cuDeviceGetCount"))?;
        let device = driver.get::<DeviceGet>(b"cuDeviceGet\0").map_err(|_| missing("cuDeviceGet"))?;
        let attribute =
            driver.get::<DeviceGetAttribute>(b"cuDeviceGetAttribute\0").map_err(|_| missing("cuDeviceGetAttribute"))?;
        let mut count = 0;
        match init(0) {
            0 if device_count(&mut count) == 0 && count > 0 => {}
            0 | NO_DEVICE => return Err("the NVIDIA driver found no GPU".into()),
            status => return Err(format!("the NVIDIA driver could not start (CUDA error {status})")),
        }
        let mut capabilities = Vec::new();
        for ordinal in 0..count {
            let (mut handle, mut major, mut minor) = (0, 0, 0);
            if device(&mut handle, ordinal) != 0
                || attribute(&mut major, COMPUTE_CAPABILITY_MAJOR, handle) != 0
                || attribute(&mut minor, COMPUTE_CAPABILITY_MINOR, handle) != 0
            {
                return Err(format!("the NVIDIA driver could not describe GPU {ordinal}"));
            }
            capabilities.push((major, minor));
        }
        gpus_too_old(&capabilities, needed).map_or(Ok(()), Err)
    }
}

/// `version` as the driver reports it: 1000 × major + 10 × minor.
fn too_old(version: c_int, needed: u32) -> Option<String> {
    let (major, minor) = (version / 1000, version % 1000 / 10);
    (major < needed as c_int).then(|| {
        format!(
            "the NVIDIA driver supports CUDA {major}.{minor}, and this engine's CUDA module needs {needed}.0 or \
             newer: update the NVIDIA driver"
        )
    })
}

/// Why GPUs of these compute capabilities cannot run a module built with CUDA `cuda_major`, if one cannot.
/// CUDA 13 compiles for Turing (7.5) and newer, CUDA 12 for Maxwell (5.0) and newer. An older GPU beside newer
/// ones cannot be hidden from CUDA here (CUDA_VISIBLE_DEVICES is read once, by the cuInit just made), so the
/// module is left out and Vulkan, which runs on all of them, is used instead.
fn gpus_too_old(capabilities: &[(c_int, c_int)], cuda_major: u32) -> Option<String> {
    let oldest = if cuda_major >= 13 { (7, 5) } else { (5, 0) };
    let (ordinal, (major, minor)) = capabilities.iter().enumerate().find(|(_, &cc)| cc < oldest)?;
    let which = if capabilities.len() == 1 { "the NVIDIA GPU".to_string() } else { format!("GPU {ordinal}") };
    let mut reason = format!(
        "{which} has compute capability {major}.{minor}, and CUDA {cuda_major} runs on {}.{} and newer",
        oldest.0, oldest.1
    );
    if capabilities.iter().any(|&cc| cc >= oldest) {
        reason.push_str("; to use CUDA on the others, hide it with CUDA_VISIBLE_DEVICES");
    }
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_older_than_the_runtime_is_named_with_both_versions() {
        assert_eq!(
            too_old(12040, 13).as_deref(),
            Some(
                "the NVIDIA driver supports CUDA 12.4, and this engine's CUDA module needs 13.0 or newer: update \
                 the NVIDIA driver"
            )
        );
        assert_eq!(too_old(13000, 13), None);
        assert_eq!(too_old(13020, 13), None);
        assert_eq!(too_old(14000, 13), None);
    }

    #[test]
    fn gpus_older_than_the_cuda_version_supports_are_named() {
        assert_eq!(gpus_too_old(&[(8, 6)], 13), None);
        assert_eq!(gpus_too_old(&[(7, 5), (12, 0)], 13), None);
        assert_eq!(
            gpus_too_old(&[(6, 1)], 13).as_deref(),
            Some("the NVIDIA GPU has compute capability 6.1, and CUDA 13 runs on 7.5 and newer")
        );
        assert_eq!(
            gpus_too_old(&[(8, 9), (7, 0)], 13).as_deref(),
            Some(
                "GPU 1 has compute capability 7.0, and CUDA 13 runs on 7.5 and newer; to use CUDA on the others, \
                 hide it with CUDA_VISIBLE_DEVICES"
            )
        );
        assert_eq!(gpus_too_old(&[(6, 1)], 12), None);
        assert!(gpus_too_old(&[(3, 7)], 12).is_some());
    }

    #[test]
    fn only_gpu_files_are_checked() {
        let mut drivers = Drivers::for_files(["libllama.so.0", "libcudart.so.13"]);
        assert_eq!(drivers.cuda_major, Some(13));
        assert_eq!(drivers.why_unusable("libggml-cpu-haswell.so", FileKind::Module), None);
        assert_eq!(drivers.why_unusable("libllama.so.0", FileKind::Library), None);
        assert!(drivers.checked.is_empty());
    }
}
