//! Timing: warm-up runs, then the median over timed repeats.
//!
//! Each repeat is timed on the host between two `Backend::synchronize()` calls, so on a GPU it covers
//! the queued kernels and the launch overhead (a synchronise costs a few microseconds; kernels in the
//! PreActResNet18 suite take tens of microseconds and more). On the CPU `synchronize` is a no-op.
use std::time::Instant;

use crate::backend::Backend;
use crate::error::Result;

/// How many runs to make.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Repeats {
    pub warmup: usize,
    pub repeats: usize,
    /// Stop adding repeats once this much time (seconds) has been spent timing (at least 1 repeat).
    pub max_seconds: f64,
}

impl Repeats {
    pub fn new(warmup: usize, repeats: usize, max_seconds: f64) -> Self {
        Repeats {
            warmup,
            repeats: repeats.max(1),
            max_seconds,
        }
    }
}

/// Summary of the timed repeats, in seconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub mean_s: f64,
    pub repeats: usize,
    /// How each repeat was timed.
    pub clock: &'static str,
}

impl Stats {
    pub fn from_samples(mut samples: Vec<f64>, clock: &'static str) -> Stats {
        assert!(!samples.is_empty(), "Stats of no samples");
        samples.sort_by(|a, b| a.total_cmp(b));
        let n = samples.len();
        let median_s = if n % 2 == 1 {
            samples[n / 2]
        } else {
            0.5 * (samples[n / 2 - 1] + samples[n / 2])
        };
        Stats {
            median_s,
            min_s: samples[0],
            max_s: samples[n - 1],
            mean_s: samples.iter().sum::<f64>() / n as f64,
            repeats: n,
            clock,
        }
    }
}

/// Run `f` `r.warmup` times (fewer once `r.max_seconds` is spent), then time up to `r.repeats` runs
/// (fewer once `r.max_seconds` is spent; at least one).
pub fn time_op(be: &dyn Backend, r: Repeats, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    let warm = Instant::now();
    for _ in 0..r.warmup {
        f()?;
        if warm.elapsed().as_secs_f64() > r.max_seconds {
            break;
        }
    }
    be.synchronize()?;
    let mut samples = Vec::with_capacity(r.repeats);
    let start_all = Instant::now();
    for _ in 0..r.repeats {
        let t = Instant::now();
        f()?;
        be.synchronize()?;
        samples.push(t.elapsed().as_secs_f64());
        if start_all.elapsed().as_secs_f64() > r.max_seconds {
            break;
        }
    }
    Ok(Stats::from_samples(
        samples,
        if be.is_gpu() {
            "host+synchronize"
        } else {
            "host"
        },
    ))
}
