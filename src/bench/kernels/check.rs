//! Correctness checks: one run of a case compared with its naive reference.

use super::*;
use crate::backend::Backend;
use crate::bench::reference::Expect;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{Indices, Tensor};

/// Outcome of a case's correctness check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Elements compared with the naive reference.
    pub points: usize,
    /// Largest |got - expected| / tolerance over them (<= 1 passes).
    pub worst_vs_reference: f64,
    /// Largest |gpu - cpu| / tolerance over every element, on a GPU backend.
    pub worst_vs_cpu_backend: Option<f64>,
    pub passed: bool,
}

/// Inputs, outputs and labels of `case` from its host data `h`, on `be`.
pub(super) fn upload_case(
    be: &dyn Backend,
    case: &Case,
    h: &HostData,
) -> Result<(Vec<Tensor>, Vec<Tensor>, Option<Indices>)> {
    let ins = upload(be, &h.ins, &case.ins)?;
    let outs = upload(be, &h.outs, &case.outs)?;
    let labels = h.labels.as_ref();
    let labels = labels.map(|l| be.indices_from_host(l)).transpose()?;
    Ok((ins, outs, labels))
}

fn upload(
    be: &dyn Backend,
    data: &[Vec<f32>],
    specs: &[(Vec<usize>, Init)],
) -> Result<Vec<Tensor>> {
    data.iter()
        .zip(specs)
        .map(|(d, (s, _))| be.from_host(d, s))
        .collect()
}

/// Compare outputs `got` of one run of `case` on `h` with the naive reference; returns (elements
/// compared, worst error / tolerance). The check passes when the worst ratio is at most 1.
pub fn check_outputs(
    case: &Case,
    h: &HostData,
    got: &[Vec<f32>],
    rng: &mut Rng,
    samples: usize,
) -> (usize, f64) {
    let want = case.reference(h, rng, samples);
    compare(got, &want, case.rel_tol())
}

fn compare(got: &[Vec<f32>], want: &[Vec<Expect>], rel: f64) -> (usize, f64) {
    let mut worst = 0.0f64;
    let mut points = 0;
    for (g, w) in got.iter().zip(want) {
        for ex in w {
            let v = g[ex.index] as f64;
            let tol = rel * ex.scale + 1e-6;
            let ratio = if v.is_finite() {
                (v - ex.value).abs() / tol
            } else {
                f64::INFINITY
            };
            worst = worst.max(ratio);
            points += 1;
        }
    }
    (points, worst)
}

/// Run one case once from its initial data and return the outputs on the host.
pub fn run_once(be: &dyn Backend, case: &Case, h: &HostData) -> Result<Vec<Vec<f32>>> {
    let (ins, mut outs, labels) = upload_case(be, case, h)?;
    case.exec(be, &ins, &mut outs, labels.as_ref())?;
    be.synchronize()?;
    outs.iter().map(|t| be.to_host(t)).collect()
}
