//! Checking and timing: one case (`run_case`) and a whole suite (`run_suite`).

use super::check::upload_case;
use super::*;
use crate::backend::Backend;
use crate::bench::device::Ceilings;
use crate::bench::timing::{time_op, BenchDevice, Stats};
use crate::error::{Error, Result};
use crate::rng::{Rng, Stream};

/// One benchmark result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelResult {
    pub name: String,
    pub family: String,
    pub flops: u64,
    pub bytes: u64,
    pub check: Option<Check>,
    pub time: Option<Stats>,
    pub gflops: Option<f64>,
    pub gbytes_per_s: Option<f64>,
    /// Achieved FLOP/s over the roofline bound min(peak, intensity x bandwidth).
    pub frac_roofline: Option<f64>,
    pub frac_peak_flops: Option<f64>,
    pub frac_peak_bandwidth: Option<f64>,
    /// Why the case has no timing (an op error or a failed check).
    pub error: Option<String>,
}

/// Check `case` on `dev` (against the naive reference, and against `cpu` when given), then time it.
pub fn run_case(
    dev: &BenchDevice,
    cpu: Option<&dyn Backend>,
    case: &Case,
    cfg: &SuiteConfig,
    ceil: &Ceilings,
    index: usize,
) -> KernelResult {
    let mut res = KernelResult {
        name: case.name.clone(),
        family: case.family.into(),
        flops: case.cost.flops,
        bytes: case.cost.bytes,
        check: None,
        time: None,
        gflops: None,
        gbytes_per_s: None,
        frac_roofline: None,
        frac_peak_flops: None,
        frac_peak_bandwidth: None,
        error: None,
    };
    let be = dev.backend.as_ref();
    let mut rng = Rng::stream(
        Stream::Bench,
        cfg.seed.wrapping_mul(1000).wrapping_add(index as u64),
    );
    let h = case.gen(&mut rng);
    let outcome = (|| -> Result<Stats> {
        let got = run_once(be, case, &h)?;
        let (points, worst) = check_outputs(case, &h, &got, &mut rng, cfg.check_samples);
        let rel = case.rel_tol();
        let vs_cpu = match cpu {
            Some(cpu) => {
                let c = run_once(cpu, case, &h)?;
                let mut worst = 0.0f64;
                for (g, c) in got.iter().zip(&c) {
                    let mean_abs =
                        c.iter().map(|v| v.abs() as f64).sum::<f64>() / c.len().max(1) as f64;
                    for (a, b) in g.iter().zip(c) {
                        let tol = 2.0 * rel * ((*b as f64).abs().max(mean_abs)) + 1e-6;
                        let d = (*a as f64 - *b as f64).abs();
                        worst = worst.max(if d.is_finite() {
                            d / tol
                        } else {
                            f64::INFINITY
                        });
                    }
                }
                Some(worst)
            }
            None => None,
        };
        let passed = worst <= 1.0 && vs_cpu.map_or(true, |w| w <= 1.0);
        res.check = Some(Check {
            points,
            worst_vs_reference: worst,
            worst_vs_cpu_backend: vs_cpu,
            passed,
        });
        if !passed {
            return Err(Error::Msg(format!(
                "check failed: worst error {worst:.3e} x tolerance vs the naive reference{}",
                vs_cpu
                    .map(|w| format!(", {w:.3e} x tolerance vs the CPU backend"))
                    .unwrap_or_default()
            )));
        }
        let (ins, mut outs, labels) = upload_case(be, case, &h)?;
        time_op(dev, cfg.repeats, || {
            case.exec(be, &ins, &mut outs, labels.as_ref())
        })
    })();
    match outcome {
        Ok(st) => {
            let t = st.median_s;
            let fl = case.cost.flops as f64 / t;
            let bw = case.cost.bytes as f64 / t;
            res.gflops = Some(fl / 1e9);
            res.gbytes_per_s = Some(bw / 1e9);
            res.frac_peak_flops = Some(fl / ceil.peak_flops);
            res.frac_peak_bandwidth = Some(bw / ceil.peak_bytes_per_s);
            res.frac_roofline = Some(ceil.min_time(case.cost.flops, case.cost.bytes) / t);
            res.time = Some(st);
        }
        Err(e) => res.error = Some(e.to_string()),
    }
    res
}

/// A whole suite run on one backend.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteReport {
    pub backend: String,
    pub ceilings: Ceilings,
    pub config: SuiteConfig,
    pub commit: Option<String>,
    pub unix_time: u64,
    pub results: Vec<KernelResult>,
}

impl SuiteReport {
    pub fn failures(&self) -> Vec<&KernelResult> {
        self.results.iter().filter(|r| r.error.is_some()).collect()
    }
    /// The timed case with the lowest fraction of its roofline bound.
    pub fn furthest_from_roofline(&self) -> Option<&KernelResult> {
        self.results
            .iter()
            .filter(|r| r.frac_roofline.is_some())
            .min_by(|a, b| {
                a.frac_roofline
                    .unwrap()
                    .total_cmp(&b.frac_roofline.unwrap())
            })
    }
}

/// Run every case of `cfg` on `be`; `cpu` (for GPU backends) is the reference backend to compare
/// with; `progress` is called after each case.
pub fn run_suite(
    dev: &BenchDevice,
    cpu: Option<&dyn Backend>,
    cfg: &SuiteConfig,
    ceil: Ceilings,
    mut progress: impl FnMut(&KernelResult),
) -> SuiteReport {
    let mut results = Vec::new();
    for (i, case) in cases(cfg).iter().enumerate() {
        let r = run_case(dev, cpu, case, cfg, &ceil, i);
        progress(&r);
        results.push(r);
    }
    SuiteReport {
        backend: dev.backend.name(),
        ceilings: ceil,
        config: cfg.clone(),
        commit: git_commit(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        results,
    }
}
