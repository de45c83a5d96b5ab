//! "What can this machine run?": which model sizes and quantizations fit in the GPUs' free memory or in main
//! memory, with a rough generation speed. Generating a token reads every weight once, so on a CPU the speed is
//! about memory bandwidth divided by the model's size; this measures the bandwidth and divides.

use std::time::Instant;

/// Typical instruct model sizes, in billions of parameters.
pub const SIZES: [f64; 7] = [0.5, 1.5, 3.0, 8.0, 14.0, 32.0, 70.0];

/// Common quantizations and their bits per weight (llama.cpp's own figures for a 7B model).
pub const QUANTIZATIONS: [(&str, f64); 5] =
    [("Q8_0", 8.5), ("Q6_K", 6.56), ("Q5_K_M", 5.69), ("Q4_K_M", 4.85), ("Q3_K_M", 3.91)];

/// The context each estimate reserves a KV cache for.
pub const CONTEXT: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fit {
    /// Entirely on the GPUs.
    Gpu,
    /// In main memory, with an estimated generation speed in tokens/s.
    Memory {
        tokens_per_second: f64,
    },
    TooBig,
}

/// Bytes a model of `billions` parameters takes at `bits` per weight, with a KV cache for [`CONTEXT`] tokens
/// (about 0.07 bytes per parameter at 4096 tokens for today's grouped-query models, in f16; `kv_ratio` scales
/// it for another cache type) and 10% for buffers.
pub fn footprint(billions: f64, bits: f64, kv_ratio: f64) -> u64 {
    let weights = billions * 1e9 * bits / 8.0;
    let kv_cache = billions * 1e9 * 0.07 * (CONTEXT as f64 / 4096.0) * kv_ratio;
    ((weights + kv_cache) * 1.1) as u64
}

/// Where a model of `bytes` (weights and cache) would run, given free GPU memory, available main memory and
/// main memory's read bandwidth (bytes per second).
pub fn fit(bytes: u64, weights: u64, gpu_free: u64, memory_available: u64, bandwidth: f64) -> Fit {
    if gpu_free > 0 && bytes <= gpu_free {
        Fit::Gpu
    } else if bytes <= memory_available {
        Fit::Memory { tokens_per_second: bandwidth / weights.max(1) as f64 }
    } else {
        Fit::TooBig
    }
}

/// Main memory's read bandwidth with up to 8 cores reading (more add little), in bytes per second: how fast the
/// CPU can stream weights. Reads 32 MiB per thread twice and keeps the faster pass (well under 0.1 s).
pub fn memory_bandwidth(threads: usize) -> f64 {
    const PER_THREAD: usize = 32 << 20;
    let threads = threads.clamp(1, 8);
    let buffers: Vec<Vec<u64>> = (0..threads).map(|i| vec![i as u64 + 1; PER_THREAD / 8]).collect();
    let mut best = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for buffer in &buffers {
                scope.spawn(move || {
                    // Summing keeps the reads from being optimized away; black_box keeps the sum.
                    std::hint::black_box(buffer.iter().fold(0u64, |sum, &x| sum.wrapping_add(x)))
                });
            }
        });
        best = best.min(started.elapsed().as_secs_f64());
    }
    (threads * PER_THREAD) as f64 / best.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn footprints_are_about_what_the_files_weigh() {
        // An 8B Q4_K_M GGUF is 4.9 GB; with its cache and buffers about 5.9 GB.
        let bytes = footprint(8.0, 4.85, 1.0);
        assert!((5_500_000_000..6_500_000_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn a_model_goes_to_the_gpu_when_it_fits_else_to_memory_else_nowhere() {
        let gb = 1_000_000_000;
        assert_eq!(fit(6 * gb, 5 * gb, 8 * GIB, 16 * GIB, 20e9), Fit::Gpu);
        assert_eq!(fit(6 * gb, 5 * gb, 4 * GIB, 16 * GIB, 20e9), Fit::Memory { tokens_per_second: 4.0 });
        assert_eq!(fit(40 * gb, 35 * gb, 4 * GIB, 16 * GIB, 20e9), Fit::TooBig);
        assert_eq!(fit(6 * gb, 5 * gb, 0, 16 * GIB, 20e9), Fit::Memory { tokens_per_second: 4.0 });
    }

    #[test]
    fn bandwidth_is_measured_as_a_plausible_number() {
        let bandwidth = memory_bandwidth(1);
        assert!(bandwidth > 1e8 && bandwidth < 1e13, "{bandwidth}");
    }
}
