//! Helpers shared by the CPU op tests (tests/cpu_ops.rs, tests/cpu_conv_ops.rs): seeded data,
//! host round trips, the normalised-error and finite-difference checks.
#![allow(dead_code)]
use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::Tensor;

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
}

pub fn be() -> CpuBackend {
    CpuBackend::new()
}
pub fn t(b: &CpuBackend, d: &[f32], s: &[usize]) -> Tensor {
    b.from_host(d, s).unwrap()
}
pub fn z(b: &CpuBackend, s: &[usize]) -> Tensor {
    b.zeros(s).unwrap()
}
pub fn h(b: &CpuBackend, x: &Tensor) -> Vec<f32> {
    b.to_host(x).unwrap()
}
pub fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
/// max |a - b| / max |b| (normalised max error).
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
        / scale
}
pub fn assert_close(what: &str, a: &[f32], b: &[f64], tol: f64) {
    let e = rel_err(a, b);
    assert!(e < tol, "{what}: normalised max error {e:e} >= {tol:e}");
}

/// `grad` agrees with central differences (step 1e-3) of `loss` at about `points` entries of `at`
/// (every len/points + 1-th), to 1e-3 * (1 + |fd|).
pub fn assert_fd(
    what: &str,
    at: &[f64],
    points: usize,
    grad: &[f32],
    loss: impl Fn(&[f64]) -> f64,
) {
    for j in (0..at.len()).step_by(at.len() / points + 1) {
        let (mut p, mut m) = (at.to_vec(), at.to_vec());
        p[j] += 1e-3;
        m[j] -= 1e-3;
        let fd = (loss(&p) - loss(&m)) / 2e-3;
        assert!(
            (fd - grad[j] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
            "{what}[{j}]: fd {fd} vs {}",
            grad[j]
        );
    }
}
