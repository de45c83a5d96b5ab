//! Which GPU drivers this machine has. A GPU module, and the runtime libraries only it needs, are placed only
//! where the driver's library loads (and, for CUDA, supports the CUDA version the engine's runtime was built
//! for): on any other machine they could not run, and copying them out would only slow every start.

use std::collections::HashMap;
use std::ffi::c_int;

use crate::launch::{cuda_runtime_major, driver_library, load_failure, AbsentFile, EngineFile, FileKind, CUDA_DRIVER};

/// The driver libraries tried so far: whether each can be used, and why not.
#[derive(Default)]
pub(super) struct Drivers {
    checked: HashMap<&'static str, Result<(), String>>,
    /// The CUDA major version the engine's CUDA runtime needs from the driver, when it carries one.
    cuda_major: Option<u32>,
}

impl Drivers {
    pub fn for_files<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Drivers { checked: HashMap::new(), cuda_major: names.into_iter().find_map(cuda_runtime_major) }
    }

    /// Takes out of `files` those whose driver cannot be used here, and says why for each.
    pub fn leave_out_unusable(&mut self, files: &mut Vec<EngineFile>) -> Vec<AbsentFile> {
        let mut absent = Vec::new();
        files.retain(|file| match self.why_unusable(&file.name, file.kind) {
            None => true,
            Some(reason) => {
                absent.push(AbsentFile { name: file.name.clone(), kind: file.kind, reason });
                false
            }
        });
        absent
    }

    /// Why a GPU module or GPU runtime library cannot be used on this machine; `None` when it can, and for every
    /// other file. A driver library that loads stays loaded: the module needs it next.
    pub fn why_unusable(&mut self, file_name: &str, kind: FileKind) -> Option<String> {
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

/// Whether the NVIDIA driver supports CUDA `needed`.0 or newer: an older driver loads, but CUDA's runtime then
/// finds no GPU, after 600 MB of runtime libraries were copied out for nothing.
fn cuda_driver_supports(driver: &libloading::Library, needed: u32) -> Result<(), String> {
    type DriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
    // SAFETY: cuDriverGetVersion has had this signature since CUDA 2.2 and may be called before cuInit.
    let Ok(get_version) = (unsafe { driver.get::<DriverGetVersion>(b"cuDriverGetVersion\0") }) else {
        return Err("the NVIDIA driver's library has no cuDriverGetVersion; reinstall the driver".into());
    };
    let mut version: c_int = 0;
    // SAFETY: writes one int to a local that outlives the call.
    let status = unsafe { get_version(&mut version) };
    if status != 0 {
        return Err(format!("the NVIDIA driver did not say which CUDA it supports (error {status})"));
    }
    too_old(version, needed).map_or(Ok(()), Err)
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
    fn only_gpu_files_are_checked() {
        let mut drivers = Drivers::for_files(["libllama.so.0", "libcudart.so.13"]);
        assert_eq!(drivers.cuda_major, Some(13));
        assert_eq!(drivers.why_unusable("libggml-cpu-haswell.so", FileKind::Module), None);
        assert_eq!(drivers.why_unusable("libllama.so.0", FileKind::Library), None);
        assert!(drivers.checked.is_empty());
    }
}
