//! Helpers shared by the emulated-kernel op tests (tests/emu_ops.rs, tests/emu_conv_ops.rs):
//! seeded data, the emulated backend, host round trips and the relative-error check.
#![allow(dead_code)]
use fmp_engine::backend::gpu::emu::EmuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::tensor::Tensor;

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1), never exactly 0.
    pub fn f(&mut self) -> f32 {
        let v = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

pub fn emu() -> EmuBackend {
    EmuBackend::emulated(0)
}

pub fn t(b: &dyn Backend, data: &[f32], shape: &[usize]) -> Tensor {
    b.from_host(data, shape).unwrap()
}

pub fn host(b: &dyn Backend, x: &Tensor) -> Vec<f32> {
    b.to_host(x).unwrap()
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / (1.0 + w.abs());
        if !(err <= worst.0) {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: element {} is {} but the reference is {} (rel err {:e} > {:e})",
        worst.1,
        got[worst.1],
        want[worst.1],
        worst.0,
        tol
    );
}
