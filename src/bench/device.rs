//! Device ceilings for the roofline: peak FP32 FLOP/s and memory bandwidth.
//!
//! GPUs come from a small table of datasheet numbers (FP32 on the CUDA cores, no tensor cores, since
//! the engine's kernels are plain FP32 FMA): H100 SXM 67 TFLOP/s and 3.35 TB/s HBM3; H100 PCIe
//! 51 TFLOP/s and 2.0 TB/s; H200 67 TFLOP/s and 4.8 TB/s HBM3e.
//! The CPU peak is the larger of two numbers. Computed: logical CPUs x base clock (from
//! /proc/cpuinfo) x SIMD lanes of the FMA datapath (16 with AVX-512, 8 with AVX2 and on AMD Zen 4,
//! whose AVX-512 is double-pumped on 256-bit pipes) x 2 (FMA) x 2 FMA ports per core; this assumes
//! each logical CPU is a full core (true on these 2-vCPU VMs: 1 thread per core) and ignores turbo.
//! Measured: every thread at once runs 16 independent register-only FMA chains of the widest
//! vectors the CPU has, so the number includes the clock the cores really run at under FMA load
//! (turbo, or AVX-512 down-clocking). CPU bandwidth is measured with a parallel triad twice: over 3 x 128 MiB
//! (beyond this VM's reported 300 MiB L3: DRAM) and over 3 x 8 MiB (the size of the suite's largest
//! activations at batch 32: last-level cache). The roofline uses the larger, since the suite's working
//! sets are cache-sized; both are reported. FMP_BENCH_CPU_PEAK_GFLOPS / FMP_BENCH_CPU_GBPS fix the
//! CPU ceilings instead (a shared machine makes the measured bandwidth vary from run to run).
use std::time::Instant;

use rayon::prelude::*;

/// Roofline ceilings of one device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ceilings {
    /// What the numbers describe, e.g. "Intel(R) Xeon(R) Processor, 2 threads".
    pub device: String,
    pub peak_flops: f64,
    pub peak_bytes_per_s: f64,
    /// Where the numbers come from.
    pub source: String,
}

impl Ceilings {
    /// The roofline bound (FLOP/s) of work with `intensity` FLOP per byte.
    pub fn roof(&self, intensity: f64) -> f64 {
        self.peak_flops.min(intensity * self.peak_bytes_per_s)
    }
    /// The time the roofline allows for `flops` and `bytes` (seconds).
    pub fn min_time(&self, flops: u64, bytes: u64) -> f64 {
        (flops as f64 / self.peak_flops).max(bytes as f64 / self.peak_bytes_per_s)
    }
}

/// Datasheet ceilings for a GPU whose backend name contains the card name; None when unknown.
pub fn gpu_ceilings(name: &str) -> Option<Ceilings> {
    let n = name.to_ascii_uppercase();
    let (flops, bw, what) = if n.contains("H200") {
        (
            67e12,
            4.8e12,
            "H200 datasheet: 67 TFLOP/s FP32, 4.8 TB/s HBM3e",
        )
    } else if n.contains("H100") && n.contains("PCIE") {
        (
            51e12,
            2.0e12,
            "H100 PCIe datasheet: 51 TFLOP/s FP32, 2.0 TB/s",
        )
    } else if n.contains("H100") {
        (
            67e12,
            3.35e12,
            "H100 SXM datasheet: 67 TFLOP/s FP32, 3.35 TB/s HBM3",
        )
    } else if n.contains("A100") {
        (
            19.5e12,
            2.0e12,
            "A100 80GB datasheet: 19.5 TFLOP/s FP32, 2.0 TB/s",
        )
    } else {
        return None;
    };
    Some(Ceilings {
        device: name.to_string(),
        peak_flops: flops,
        peak_bytes_per_s: bw,
        source: what.into(),
    })
}

/// CPU model name, MHz and the FP32 lanes of one FMA pipe (8 for AVX-512 on Zen 4, which splits
/// 512-bit FMAs over two 256-bit pipes) from /proc/cpuinfo (None fields where unreadable).
pub fn cpu_info() -> (String, Option<f64>, usize) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let mhz = field("cpu MHz").and_then(|v| v.parse::<f64>().ok());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    // AMD Zen 4 (family 25 with AVX-512) runs 512-bit FMAs as two halves on its two 256-bit FMA
    // pipes: its FMA datapath is 8 lanes wide, as with AVX2 (Zen 5, family 26, is 16 lanes).
    let zen4 = field("vendor_id").as_deref() == Some("AuthenticAMD")
        && field("cpu family").as_deref() == Some("25");
    let lanes = if has("avx512f") && !zen4 {
        16
    } else if has("avx512f") || (has("avx2") && has("fma")) {
        8
    } else {
        4
    };
    (model, mhz, lanes)
}

/// Measured parallel triad bandwidth a[i] = b[i] + s * c[i] over arrays of `n` f32 (bytes moved:
/// 3 x 4 per element), best of `reps` after one untimed pass (the best, because other processes
/// on a shared machine only ever slow a pass down).
pub fn measure_cpu_bandwidth(n: usize, reps: usize) -> f64 {
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let mut best = f64::INFINITY;
    for rep in 0..=reps.max(1) {
        let t = Instant::now();
        a.par_chunks_mut(1 << 16)
            .zip(b.par_chunks(1 << 16))
            .zip(c.par_chunks(1 << 16))
            .for_each(|((a, b), c)| triad(a, b, c));
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&a);
    (3 * 4 * n) as f64 / best
}

fn triad_scalar(a: &mut [f32], b: &[f32], c: &[f32]) {
    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
        *a = b + 0.5 * c;
    }
}

/// The same loop compiled for AVX2, so that the vector width does not limit the measurement.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn triad_avx2(a: &mut [f32], b: &[f32], c: &[f32]) {
    triad_scalar(a, b, c)
}

fn triad(a: &mut [f32], b: &[f32], c: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above); the function only reads and writes
        // the given slices.
        unsafe { triad_avx2(a, b, c) };
        return;
    }
    triad_scalar(a, b, c)
}

/// FMA-loop throughput of one thread (FLOP/s): `CHAINS` independent accumulators of `LANES` lanes,
/// each updated by a dependent FMA chain of `ITERS` steps (the caller keeps the best of 20 passes
/// of about 1 ms). No memory traffic: what the core's FMA pipes sustain at the clock they really
/// run at (turbo included). The chains and the two constants must fit the register file (AVX2 has
/// 16 vector registers: 16 chains spilled two of them to the stack, and the store-to-load round trip
/// in those chains held the loop to about 70% of the pipes on a Zen 3); 12 chains still cover two
/// pipes x 4 to 5 cycles of FMA latency.
macro_rules! fma_loop {
    ($name:ident, $feat:literal, $vec:ty, $set1:ident, $fma:ident, $add:ident, $store:ident, $lanes:expr, $chains:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(iters: usize) -> f32 {
            use std::arch::x86_64::*;
            let m = $set1(0.999_999);
            let a = $set1(1e-7);
            let mut acc: [$vec; $chains] = [$set1(1.0); $chains];
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = $fma(*v, m, a);
                }
            }
            let mut sum = acc[0];
            for v in &acc[1..] {
                sum = $add(sum, *v);
            }
            let mut out = [0.0f32; $lanes];
            $store(out.as_mut_ptr(), sum);
            out.iter().sum()
        }
    };
}
fma_loop!(
    fma_avx2,
    "avx2,fma",
    __m256,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps,
    8,
    AVX2_CHAINS
);
fma_loop!(
    fma_avx512,
    "avx512f",
    __m512,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_storeu_ps,
    16,
    AVX512_CHAINS
);
/// Chains of the FMA loops (see `fma_loop!`).
const AVX2_CHAINS: usize = 12;
const AVX512_CHAINS: usize = 16;

/// Measured FP32 FMA throughput of `threads` threads running the FMA loop at once (FLOP/s), and
/// the instruction set it used (the widest this CPU has); None without AVX2 + FMA.
pub fn measure_cpu_fma_peak(threads: usize) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = is_x86_feature_detected!("avx512f");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if !(avx512 || avx2) {
            return None;
        }
        const ITERS: usize = 200_000;
        let (lanes, chains, isa) = if avx512 {
            (16, AVX512_CHAINS, "avx512")
        } else {
            (8, AVX2_CHAINS, "avx2")
        };
        let mut best = f64::INFINITY;
        for rep in 0..21 {
            let t = Instant::now();
            let sink: f32 = (0..threads)
                .into_par_iter()
                // SAFETY: the features each loop is compiled for were detected just above; the
                // loops touch only their own registers and a local array.
                .map(|_| unsafe {
                    if avx512 {
                        fma_avx512(ITERS)
                    } else {
                        fma_avx2(ITERS)
                    }
                })
                .sum();
            std::hint::black_box(sink);
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        let flops = (threads * ITERS * chains * lanes * 2) as f64;
        Some((flops / best, isa))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

/// CPU ceilings: peak FLOP/s, the larger of the computed nominal peak and the measured FMA loop
/// (the nominal one uses the base clock, and cores run above it), and measured triad bandwidth (see
/// module docs).
pub fn cpu_ceilings(threads: usize) -> Ceilings {
    let (model, mhz, lanes) = cpu_info();
    let ghz = mhz.unwrap_or(2000.0) / 1000.0;
    let nominal = threads as f64 * ghz * 1e9 * lanes as f64 * 2.0 * 2.0;
    let measured = measure_cpu_fma_peak(threads);
    let peak = measured.map_or(nominal, |(m, _)| m.max(nominal));
    let dram = measure_cpu_bandwidth(32 << 20, 3);
    let cache = measure_cpu_bandwidth(2 << 20, 20);
    let bw = dram.max(cache);
    let fma = measured.map_or("no FMA loop on this CPU".to_string(), |(m, isa)| {
        format!("measured {isa} FMA loop {:.1} GFLOP/s", m / 1e9)
    });
    let mut c = Ceilings {
        device: format!("{model}, {threads} threads"),
        peak_flops: peak,
        peak_bytes_per_s: bw,
        source: format!(
            "peak = {:.1} GFLOP/s, the larger of: computed {threads} threads x {ghz:.2} GHz x {lanes} lanes x 2 (FMA) x 2 ports \
             = {:.1} GFLOP/s; {fma}; \
             bandwidth = measured triad {:.1} GB/s over 3 x 8 MiB (cache; 3 x 128 MiB: {:.1} GB/s)",
            peak / 1e9,
            nominal / 1e9,
            cache / 1e9,
            dram / 1e9
        ),
    };
    // Fixed ceilings for comparable runs on a noisy machine (GFLOP/s, GB/s).
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
    };
    if let Some(f) = env("FMP_BENCH_CPU_PEAK_GFLOPS") {
        c.peak_flops = f * 1e9;
        c.source += &format!("; peak overridden by FMP_BENCH_CPU_PEAK_GFLOPS={f}");
    }
    if let Some(b) = env("FMP_BENCH_CPU_GBPS") {
        c.peak_bytes_per_s = b * 1e9;
        c.source += &format!("; bandwidth overridden by FMP_BENCH_CPU_GBPS={b}");
    }
    c
}

/// Ceilings for a backend by its name and kind.
pub fn ceilings_for(backend_name: &str, is_gpu: bool) -> Ceilings {
    if is_gpu {
        gpu_ceilings(backend_name).unwrap_or(Ceilings {
            device: backend_name.into(),
            peak_flops: f64::NAN,
            peak_bytes_per_s: f64::NAN,
            source: "unknown GPU: add it to bench::device::gpu_ceilings".into(),
        })
    } else {
        cpu_ceilings(rayon::current_num_threads())
    }
}
