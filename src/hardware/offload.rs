//! How many of a model's layers go to the GPU: all when they fit with their KV cache, the most that fit when
//! not, none when not even one does. Estimated from the GGUF's tensor sizes and each GPU's free memory before
//! anything is loaded, as Ollama does, so a model too big for the card still starts.

use serde::Serialize;

use super::{human_bytes, Device};
use crate::gguf::ModelLayout;

/// Kept free on the GPUs for llama.cpp's compute buffers (the attention scratch and logits of one batch) and
/// the driver's own allocations: at least this much, or a twentieth of the GPUs' free memory if more.
const GPU_RESERVE: u64 = 512 << 20;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OffloadPlan {
    /// Layers on the GPUs, of `total_layers`.
    pub layers: u32,
    pub total_layers: u32,
    /// Free memory of the GPUs considered, together.
    pub gpu_free: u64,
    /// Expected use: on the GPUs (weights, KV cache and reserve) and in main memory (the rest).
    pub gpu_bytes: u64,
    pub cpu_bytes: u64,
    /// Why, in a few words: "all layers fit", "--gpu-layers 10", "no GPU".
    pub reason: String,
    /// When not all layers fit: the largest `--ctx-size` (per conversation) at which they would.
    pub full_offload_context: Option<u64>,
    /// Where the offloaded layers go when there are several devices, in llama.cpp's order and by its default
    /// split (each device's share of their free memory, workers first); empty with one device or none.
    pub split: Vec<Share>,
    /// With workers (`--worker`): what crosses the links per generated token, by this plan: the numbers passed
    /// between layers wherever the next layer is on another machine, and the logits when a worker holds the
    /// output layer. ggml's own commands come on top (a few KiB).
    pub link_bytes_per_token: Option<u64>,
}

/// One device's part of the offloaded layers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Share {
    /// ggml's name for it (`Vulkan0`, `RPC1`).
    pub device: String,
    /// The worker it belongs to (`HOST:PORT`), when it is another machine's.
    pub worker: Option<String>,
    pub layers: u32,
    /// Whether it holds the output layer too.
    pub output: bool,
}

impl OffloadPlan {
    /// The value for llama.cpp's `n_gpu_layers`: -1 puts every layer and the output head on the GPU.
    pub fn n_gpu_layers(&self) -> i32 {
        if self.total_layers > 0 && self.layers == self.total_layers {
            -1
        } else {
            i32::try_from(self.layers).unwrap_or(i32::MAX)
        }
    }

    pub fn describe(&self) -> String {
        let on = if self.link_bytes_per_token.is_some() { "on the GPUs and workers" } else { "on the GPU" };
        let mut text = format!(
            "{} of {} layers {on} ({}): {} there, {} in main memory",
            self.layers,
            self.total_layers,
            self.reason,
            human_bytes(self.gpu_bytes),
            human_bytes(self.cpu_bytes)
        );
        if let Some(context) = self.full_offload_context {
            text.push_str(&format!("; all would fit with --ctx-size {context}"));
        }
        if !self.split.is_empty() {
            let shares: Vec<String> = self
                .split
                .iter()
                .map(|share| {
                    let place = share.worker.as_ref().map_or(String::new(), |w| format!(" on worker {w}"));
                    let output = if share.output { " and the output" } else { "" };
                    format!("{}{place} {}{output}", share.device, share.layers)
                })
                .collect();
            text.push_str(&format!("; split: {}", shares.join(", ")));
        }
        if let Some(bytes) = self.link_bytes_per_token {
            text.push_str(&format!("; about {} a token over the links", human_bytes(bytes)));
        }
        text
    }
}

/// llama.cpp's default split of `layers` offloaded layers (the last ones, and the output layer too when all
/// are) over `devices`: each device takes the layers whose position falls in its share of the free memory
/// (`llama_model::load_tensors`). Returns, per layer and then for the output layer, the device's index or
/// `None` for main memory.
fn placement(devices: &[&Device], layers: u32, total_layers: u32) -> Vec<Option<usize>> {
    let free: Vec<f64> = devices.iter().map(|d| d.memory_free as f64).collect();
    let sum: f64 = free.iter().sum();
    let bounds: Vec<f64> = free
        .iter()
        .scan(0.0, |acc, f| {
            *acc += f;
            Some(*acc / sum.max(1.0))
        })
        .collect();
    // With every layer offloaded, llama.cpp counts the output layer as one more.
    let offloaded = if layers >= total_layers { total_layers + 1 } else { layers };
    let start = total_layers + 1 - offloaded;
    (0..=total_layers)
        .map(|layer| {
            (layer >= start && !devices.is_empty()).then(|| {
                let position = f64::from(layer - start) / f64::from(offloaded);
                bounds.iter().position(|&b| b > position).unwrap_or(devices.len() - 1)
            })
        })
        .collect()
}

/// The shares of [`OffloadPlan::split`] and the link estimate, for `layers` offloaded onto `gpus`.
fn split(layout: &ModelLayout, gpus: &[Device], layers: u32) -> (Vec<Share>, Option<u64>) {
    let total_layers = layout.layer_bytes.len() as u32;
    // llama.cpp puts other machines' devices first, to keep the traffic between machines low.
    let mut devices: Vec<&Device> = gpus.iter().filter(|d| d.is_gpu()).collect();
    devices.sort_by_key(|d| d.worker.is_none());
    if layers == 0 || devices.len() < 2 && devices.iter().all(|d| d.worker.is_none()) {
        return (Vec::new(), None);
    }
    let places = placement(&devices, layers, total_layers);
    let mut shares: Vec<Share> = devices
        .iter()
        .map(|d| Share { device: d.name.clone(), worker: d.worker.clone(), layers: 0, output: false })
        .collect();
    for (layer, place) in places.iter().enumerate() {
        if let Some(i) = place {
            if layer < total_layers as usize {
                shares[*i].layers += 1;
            } else {
                shares[*i].output = true;
            }
        }
    }
    shares.retain(|s| s.layers > 0 || s.output);
    let remote = |place: Option<usize>| place.is_some_and(|i| devices[i].worker.is_some());
    // The token's numbers start in main memory (the input layer stays there), pass each layer, and the
    // logits end in main memory.
    let mut link = 0;
    let mut here: Option<usize> = None;
    for &place in &places {
        if place != here && (remote(place) || remote(here)) {
            link += layout.width * 4;
        }
        here = place;
    }
    if remote(here) {
        link += layout.vocabulary * 4;
    }
    let any_worker = devices.iter().any(|d| d.worker.is_some());
    (shares, any_worker.then_some(link))
}

/// Plans the offload of `layout` onto `gpus` for a KV cache of `conversations` × `context` tokens.
/// `requested` is `--gpu-layers` when given (-1: all). `projector` is the bytes of a projector (`--mmproj`),
/// which goes to the GPU whenever any layer does (where llama.cpp's mtmd puts it), so it is counted first.
pub fn plan(
    layout: &ModelLayout,
    gpus: &[Device],
    conversations: u64,
    context: u64,
    requested: Option<i32>,
    projector: u64,
) -> OffloadPlan {
    let total_layers = layout.layer_bytes.len() as u32;
    let kv_layer = layout.kv_bytes(conversations * context) / u64::from(total_layers.max(1));
    let gpu_free: u64 = gpus.iter().filter(|d| d.is_gpu()).map(|d| d.memory_free).sum();
    let reserve = GPU_RESERVE.max(gpu_free / 20);
    let cost = |layers: u32| -> u64 {
        let start = (total_layers - layers) as usize; // llama.cpp offloads the last layers first
        let weights: u64 = layout.layer_bytes[start..].iter().sum();
        let head = if layers == total_layers { layout.other_bytes } else { 0 };
        weights + head + kv_layer * u64::from(layers)
    };
    let all = cost(total_layers);
    let everything = layout.weight_bytes() + kv_layer * u64::from(total_layers) + projector;
    // What goes to the GPUs with `layers` layers there (the projector goes with the first).
    let on_gpu = |layers: u32| if layers > 0 { cost(layers) + projector } else { 0 };
    let result = |layers: u32, reason: String, full_offload_context: Option<u64>| {
        let gpu_bytes = if layers > 0 { on_gpu(layers) + reserve } else { 0 };
        let (split, link_bytes_per_token) = split(layout, gpus, layers);
        OffloadPlan {
            split,
            link_bytes_per_token,
            layers,
            total_layers,
            gpu_free,
            gpu_bytes,
            cpu_bytes: everything.saturating_sub(on_gpu(layers)),
            reason,
            full_offload_context,
        }
    };
    if !gpus.iter().any(Device::is_gpu) || total_layers == 0 {
        return result(0, "no GPU".into(), None);
    }
    if let Some(n) = requested {
        let layers = u32::try_from(n).map_or(total_layers, |n| n.min(total_layers));
        return result(layers, format!("--gpu-layers {n}"), None);
    }
    if all + projector + reserve <= gpu_free {
        return result(total_layers, "all layers fit".into(), None);
    }
    let fitting = (0..total_layers).rev().find(|&n| on_gpu(n) + reserve <= gpu_free).unwrap_or(0);
    // The largest context, in steps of 256 tokens (llama.cpp's granularity), at which everything would fit.
    let full_offload_context = (1..=context / 256)
        .rev()
        .map(|steps| steps * 256)
        .find(|&c| layout.weight_bytes() + layout.kv_bytes(conversations * c) + projector + reserve <= gpu_free);
    let reason = match fitting {
        0 => format!("not one layer fits in {} free", human_bytes(gpu_free)),
        _ => format!("as many as fit in {} free", human_bytes(gpu_free)),
    };
    result(fitting, reason, full_offload_context)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn gpu(free: u64) -> Device {
        Device {
            name: "GPU0".into(),
            description: "test".into(),
            backend: "Vulkan".into(),
            kind: crate::hardware::DeviceKind::Gpu,
            memory_total: free,
            memory_free: free,
            worker: None,
        }
    }

    fn worker(name: &str, free: u64) -> Device {
        Device { name: name.into(), backend: "RPC".into(), worker: Some(format!("{name}:50052")), ..gpu(free) }
    }

    #[test]
    fn workers_split_the_layers_by_free_memory_as_llama_cpp_does() {
        // Two workers with room for everything, the second with twice the memory: 11 places (10 layers and the
        // output) at positions 0, 1/11, …; the first takes those below a third.
        let plan = plan(&layout(), &[worker("a", 4096 * MIB), worker("b", 8192 * MIB)], 1, 4096, None, 0);
        assert_eq!(plan.layers, 10);
        let shares: Vec<(u32, bool)> = plan.split.iter().map(|s| (s.layers, s.output)).collect();
        assert_eq!(shares, [(4, false), (6, true)], "{plan:?}");
        // In from main memory, across from a to b, and the logits back.
        assert_eq!(plan.link_bytes_per_token, Some(2 * 1024 * 4 + 32000 * 4));
        assert!(plan.describe().contains("split: a on worker a:50052 4, b on worker b:50052 6 and the output"));
        // A local GPU comes after the workers; one GPU alone has no split.
        let mixed = super::plan(&layout(), &[gpu(4096 * MIB), worker("a", 4096 * MIB)], 1, 4096, None, 0);
        assert_eq!(mixed.split[0].worker.as_deref(), Some("a:50052"));
        assert!(super::plan(&layout(), &[gpu(4096 * MIB)], 1, 4096, None, 0).split.is_empty());
    }

    /// 10 layers of 100 MiB, 50 MiB of embeddings and head, 1 KiB of KV cache per token and layer.
    fn layout() -> ModelLayout {
        ModelLayout {
            layer_bytes: vec![100 * MIB; 10],
            other_bytes: 50 * MIB,
            kv_bytes_per_token_layer: 1024,
            width: 1024,
            vocabulary: 32000,
        }
    }

    #[test]
    fn everything_goes_to_a_gpu_that_holds_it() {
        // Weights 1050 MiB + KV 10 × 4096 tokens × 1 KiB = 40 MiB + 512 MiB reserve.
        let plan = plan(&layout(), &[gpu(2048 * MIB)], 1, 4096, None, 0);
        assert_eq!((plan.layers, plan.n_gpu_layers()), (10, -1));
        assert_eq!(plan.gpu_bytes, (1050 + 40 + 512) * MIB);
        assert_eq!(plan.cpu_bytes, 0);
    }

    #[test]
    fn a_smaller_gpu_takes_as_many_layers_as_fit_and_says_what_context_would_fit_all() {
        // 1024 MiB free − 512 reserve = 512 MiB: 5 layers of 100 MiB + 4 MiB KV each.
        let plan = plan(&layout(), &[gpu(1024 * MIB)], 4, 4096, None, 0);
        assert_eq!(plan.layers, 4, "{plan:?}"); // 5 × (100 + 16) MiB = 580 MiB would not fit
        assert_eq!(plan.full_offload_context, None, "the weights alone do not fit");
        let roomy = plan_for(1700);
        assert_eq!(roomy.layers, 7, "{roomy:?}"); // 7 × (100 + 64) MiB of 1188 MiB
        assert!(roomy.full_offload_context.is_some_and(|c| c < 16384 && c % 256 == 0), "{roomy:?}");
        assert!(roomy.describe().contains("all would fit with --ctx-size"), "{}", roomy.describe());
    }

    fn plan_for(free_mib: u64) -> OffloadPlan {
        // 4 conversations of 16384 tokens: 640 MiB of KV cache in all.
        plan(&layout(), &[gpu(free_mib * MIB)], 4, 16384, None, 0)
    }

    #[test]
    fn no_gpu_or_no_room_means_the_cpu_does_it_all() {
        assert_eq!(plan(&layout(), &[], 1, 4096, None, 0).layers, 0);
        let tiny = plan(&layout(), &[gpu(256 * MIB)], 1, 4096, None, 0);
        assert_eq!((tiny.layers, tiny.gpu_bytes), (0, 0));
        assert!(tiny.reason.contains("not one layer fits"), "{}", tiny.reason);
    }

    #[test]
    fn gpu_layers_overrides_the_plan() {
        let plan = plan(&layout(), &[gpu(256 * MIB)], 1, 4096, Some(3), 0);
        assert_eq!((plan.layers, plan.n_gpu_layers()), (3, 3));
        assert_eq!(super::plan(&layout(), &[gpu(256 * MIB)], 1, 4096, Some(-1), 0).n_gpu_layers(), -1);
    }

    #[test]
    fn a_projector_goes_to_the_gpu_before_the_layers_and_stays_in_main_memory_without_one() {
        // 2048 MiB held everything with 456 MiB to spare; a 500 MiB projector leaves room for 9 layers.
        let plan = plan(&layout(), &[gpu(2048 * MIB)], 1, 4096, None, 500 * MIB);
        assert_eq!(plan.layers, 9, "{plan:?}");
        assert_eq!(plan.gpu_bytes, (9 * 104 + 500 + 512) * MIB);
        assert_eq!(plan.cpu_bytes, (104 + 50) * MIB);
        let cpu = super::plan(&layout(), &[], 1, 4096, None, 500 * MIB);
        assert_eq!((cpu.gpu_bytes, cpu.cpu_bytes), (0, (1050 + 40 + 500) * MIB));
    }
}
