//! What this machine has: cores, memory, CPU features and the devices llama.cpp can use.

pub mod backends;
pub mod capacity;
pub mod offload;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    pub cpu: String,
    pub cpu_features: Vec<&'static str>,
    pub physical_cores: usize,
    pub logical_cores: usize,
    pub memory_total: Option<u64>,
    pub memory_available: Option<u64>,
    /// Devices llama.cpp's backends report, the CPU included.
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub name: String,
    pub description: String,
    pub backend: String,
    pub kind: DeviceKind,
    pub memory_total: u64,
    pub memory_free: u64,
    /// The worker (`--worker HOST:PORT`) whose device this is, for another machine's.
    pub worker: Option<String>,
}

/// What kind of device llama.cpp says it is; `/stove/info` shows it as `cpu`, `gpu`, `igpu` or `accelerator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Gpu,
    /// A GPU that shares the system's memory.
    Igpu,
    Accelerator,
}

impl Device {
    /// Whether llama.cpp can offload layers to it.
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu | DeviceKind::Igpu)
    }
}

/// Threads to use by default: one per physical core. llama.cpp's own default of 4 made generation 3.7x
/// slower on a 2-core machine, and hyper-threads only contend for the same vector units.
pub fn default_threads() -> usize {
    num_cpus::get_physical().max(1)
}

pub fn detect() -> Hardware {
    Hardware {
        cpu: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        cpu_features: cpu_features(),
        physical_cores: num_cpus::get_physical(),
        logical_cores: num_cpus::get(),
        memory_total: total_memory(),
        memory_available: available_memory(),
        devices: devices(),
    }
}

/// The devices llama.cpp's loaded backends offer, the CPU included.
pub fn devices() -> Vec<Device> {
    use llama_cpp_2::LlamaBackendDeviceType as Type;
    // The devices are those of the backends `load` registered (this says so if it did not run).
    backends::current();
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| Device {
            kind: match d.device_type {
                Type::Cpu => DeviceKind::Cpu,
                Type::Gpu => DeviceKind::Gpu,
                Type::IntegratedGpu => DeviceKind::Igpu,
                _ => DeviceKind::Accelerator,
            },
            // ggml describes a worker's device by its endpoint, the loopback port its link listens on.
            worker: crate::rpc::remote::workers()
                .iter()
                .find(|w| w.endpoint == d.description)
                .map(|w| w.address.clone()),
            name: d.name,
            description: d.description,
            backend: d.backend,
            memory_total: d.memory_total as u64,
            memory_free: d.memory_free as u64,
        })
        .collect()
}

/// Memory that can be used without swapping, from the kernel's own estimate.
#[cfg(not(windows))]
pub fn available_memory() -> Option<u64> {
    meminfo("MemAvailable:")
}

#[cfg(not(windows))]
fn total_memory() -> Option<u64> {
    meminfo("MemTotal:")
}

#[cfg(not(windows))]
fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Memory that can be used without swapping: Windows' "available physical memory".
#[cfg(windows)]
pub fn available_memory() -> Option<u64> {
    memory_status().map(|status| status.ullAvailPhys)
}

#[cfg(windows)]
fn total_memory() -> Option<u64> {
    memory_status().map(|status| status.ullTotalPhys)
}

#[cfg(windows)]
fn memory_status() -> Option<windows_sys::Win32::System::SystemInformation::MEMORYSTATUSEX> {
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    // SAFETY: MEMORYSTATUSEX is plain data; the call fills the struct whose size is set first, as it requires.
    unsafe {
        let mut status: MEMORYSTATUSEX = std::mem::zeroed();
        status.dwLength = size_of::<MEMORYSTATUSEX>() as u32;
        (GlobalMemoryStatusEx(&mut status) != 0).then_some(status)
    }
}

/// The processor's name: Linux's `/proc/cpuinfo`, else what the processor itself says (CPUID's brand string).
fn cpu_model() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("model name"))?;
        Some(line.split_once(':')?.1.trim().to_string())
    });
    from_kernel.or_else(cpu_brand)
}

#[cfg(target_arch = "x86_64")]
fn cpu_brand() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    // Leaf 0x80000000 says whether the brand leaves exist (CPUID itself exists on every x86-64 processor).
    if __cpuid(0x8000_0000).eax < 0x8000_0004 {
        return None;
    }
    let mut bytes = Vec::with_capacity(48);
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        let r = __cpuid(leaf);
        for word in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
    }
    let brand = String::from_utf8_lossy(&bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    (!brand.is_empty()).then_some(brand)
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_brand() -> Option<String> {
    None
}

/// The vector extensions that decide which llama.cpp CPU kernels can run here.
fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($feature:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($feature) {
                    features.push($feature);
                }
            )*};
        }
        probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni", "avx512bf16");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($feature:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($feature) {
                    features.push($feature);
                }
            )*};
        }
        probe!("neon", "dotprod", "i8mm", "sve");
    }
    features
}

/// The features the CPU backend's code uses, from llama.cpp's system info line (`CPU : SSE3 = 1 | AVX = 1 |
/// ...`): with ggml's CPU variants these are the chosen variant's, not just what the processor offers.
pub fn cpu_backend_features(system_info: &str) -> Vec<String> {
    let mut backend = "";
    let mut features = Vec::new();
    for part in system_info.split('|') {
        // A new backend's section starts "NAME : FEATURE = VALUE".
        let part = match part.split_once(" : ") {
            Some((name, rest)) => {
                backend = name.trim();
                rest
            }
            None => part,
        };
        if let Some((feature, value)) = part.split_once('=') {
            if backend == "CPU" && value.trim() == "1" {
                features.push(feature.trim().to_string());
            }
        }
    }
    features
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(98_362_432), "93.8 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn cpu_features_come_from_the_cpu_section_only() {
        let info = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | FMA = 1 | ";
        assert_eq!(cpu_backend_features(info), ["SSE3", "AVX", "FMA"]);
        assert!(cpu_backend_features("").is_empty());
    }
}
