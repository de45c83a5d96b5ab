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
        let mut text = format!(
            "{} of {} layers on the GPU ({}): {} there, {} in main memory",
            self.layers,
            self.total_layers,
            self.reason,
            human_bytes(self.gpu_bytes),
            human_bytes(self.cpu_bytes)
        );
        if let Some(context) = self.full_offload_context {
            text.push_str(&format!("; all would fit with --ctx-size {context}"));
        }
        text
    }
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
        OffloadPlan {
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
        }
    }

    /// 10 layers of 100 MiB, 50 MiB of embeddings and head, 1 KiB of KV cache per token and layer.
    fn layout() -> ModelLayout {
        ModelLayout { layer_bytes: vec![100 * MIB; 10], other_bytes: 50 * MIB, kv_bytes_per_token_layer: 1024 }
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
