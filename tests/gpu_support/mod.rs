//! Shared helpers of the GPU tests (`tests/gpu_*.rs`): one CUDA backend per test process, the
//! CPU reference, seeded inputs and the CUDA-vs-CPU comparison.
//!
//! Without a usable GPU every test prints why and returns (skips); with FMP_REQUIRE_GPU=1 (set by
//! scripts/device-check.sh on the GPU machine) a missing GPU is a failure instead.
#![allow(dead_code)]
use std::sync::{Arc, OnceLock};

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::gpu::cuda::CudaBackend;
use fmp_engine::backend::Backend;
use fmp_engine::Tensor;

/// The backend under test: the process's CUDA backend (device $FMP_TEST_CUDA_DEVICE, default 0),
/// or None after printing why the test is skipped. With `--features emu` and
/// FMP_GPU_TESTS_EMU=1 the same tests run on the CPU kernel emulator instead (to check the tests
/// themselves without a GPU).
pub fn gpu(test: &str) -> Option<&'static dyn Backend> {
    #[cfg(feature = "emu")]
    if std::env::var("FMP_GPU_TESTS_EMU")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        static E: OnceLock<fmp_engine::backend::gpu::emu::EmuBackend> = OnceLock::new();
        return Some(E.get_or_init(|| fmp_engine::backend::gpu::emu::EmuBackend::emulated(0)));
    }
    cuda(test).map(|b| b as &dyn Backend)
}

/// The backend under test as `Arc<dyn Backend>` (what models take); see `gpu`.
pub fn gpu_arc(test: &str) -> Option<Arc<dyn Backend>> {
    #[cfg(feature = "emu")]
    if std::env::var("FMP_GPU_TESTS_EMU")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        return Some(Arc::new(
            fmp_engine::backend::gpu::emu::EmuBackend::emulated(0),
        ));
    }
    cuda_arc(test).map(|b| b.clone() as Arc<dyn Backend>)
}

/// The process's CUDA backend, or None after printing why the test is skipped
/// (a failure instead with FMP_REQUIRE_GPU=1).
pub fn cuda(test: &str) -> Option<&'static CudaBackend> {
    cuda_arc(test).map(|a| &**a)
}

/// The process's CUDA backend as a shared handle (what models take), or None as `cuda`.
pub fn cuda_arc(test: &str) -> Option<&'static Arc<CudaBackend>> {
    static G: OnceLock<Result<Arc<CudaBackend>, String>> = OnceLock::new();
    let r = G.get_or_init(|| {
        let ordinal = std::env::var("FMP_TEST_CUDA_DEVICE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        CudaBackend::cuda(ordinal)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    });
    match r {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("FMP_REQUIRE_GPU")
                .map(|v| v == "1")
                .unwrap_or(false)
            {
                panic!("{test}: FMP_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e}");
            }
            eprintln!("skipping {test}: no usable GPU: {e}");
            None
        }
    }
}

pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// xorshift64* uniform in [lo, hi).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        v as f32 / (1u64 << 24) as f32
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
    /// Values in [lo, hi) that are never within 1e-3 of zero (non-zero inputs, stable ReLU masks).
    pub fn nonzero(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| loop {
                let v = lo + (hi - lo) * self.next();
                if v.abs() > 1e-3 {
                    break v;
                }
            })
            .collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next() * n as f32) as u32).min(n - 1)
    }
}

pub fn up(b: &dyn Backend, data: &[f32], shape: &[usize]) -> Tensor {
    b.from_host(data, shape).unwrap()
}

/// An output buffer pre-filled with garbage, so an op that accumulates instead of overwriting fails.
pub fn out(b: &dyn Backend, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let junk: Vec<f32> = (0..n).map(|i| 1.0e3 + (i % 7) as f32).collect();
    b.from_host(&junk, shape).unwrap()
}

pub fn down(b: &dyn Backend, t: &Tensor) -> Vec<f32> {
    b.to_host(t).unwrap()
}

/// Assert `got` (CUDA) matches `want` (CPU): max |got - want| <= tol * max(max |want|, floor).
/// Also rejects NaN/inf in `got`. Returns the normalised error.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: CUDA output has a non-finite value {} at {i}",
            got[i]
        );
    }
    let scale = want.iter().fold(1e-6f64, |m, &v| m.max(v.abs() as f64));
    let (mut worst, mut at) = (0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        if d > worst {
            worst = d;
            at = i;
        }
    }
    let err = worst / scale;
    assert!(
        err <= tol,
        "{what}: CUDA differs from CPU: max |diff| {worst:.3e} at {at} (cuda {} vs cpu {}), scale {scale:.3e}, \
         normalised {err:.3e} > {tol:.1e}",
        got[at],
        want[at]
    );
    err
}

/// Looser comparison for gradients that pass backwards through ReLU masks: a pre-activation within
/// rounding of zero may switch its mask between the two backends (their forward sums differ in
/// the last bits), which changes the gradient locally by O(1). So: relative L2 error
/// ||got - want|| / ||want|| <= `l2_tol`, and the max error normalised by max |want| <= `max_tol`.
/// (On the CPU alone, a 3e-7 relative input perturbation gives up to 6e-3 L2 / 4e-2 max through
/// a width-64 PreActResNet18; a wrong kernel gives O(1).)
pub fn assert_close_masked(what: &str, got: &[f32], want: &[f32], l2_tol: f64, max_tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: CUDA output has a non-finite value {} at {i}",
            got[i]
        );
    }
    let scale = want.iter().fold(1e-12f64, |m, &v| m.max(v.abs() as f64));
    let (mut d2, mut w2, mut worst) = (0f64, 1e-300f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = g as f64 - w as f64;
        d2 += d * d;
        w2 += (w as f64) * (w as f64);
        worst = worst.max(d.abs());
    }
    let (l2, mx) = ((d2 / w2).sqrt(), worst / scale);
    assert!(
        l2 <= l2_tol && mx <= max_tol,
        "{what}: CUDA differs from CPU: relative L2 {l2:.3e} (tol {l2_tol:.0e}), max/scale {mx:.3e} (tol {max_tol:.0e})"
    );
}

/// Run `f` on the CPU reference and on the GPU, and compare each returned output.
/// `f` uploads its own (seeded) inputs, so both backends see identical data.
pub fn compare(
    test: &str,
    gpu: &dyn Backend,
    tol: f64,
    f: impl Fn(&dyn Backend) -> Vec<(&'static str, Vec<f32>)>,
) {
    let c = cpu();
    let want = f(&c);
    let got = f(gpu);
    gpu.synchronize().unwrap_or_else(|e| panic!("{test}: {e}"));
    assert_eq!(want.len(), got.len());
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        assert_close(&format!("{test}: {name}"), g, w, tol);
    }
}
