//! Timing: warm-up runs, then the median over timed repeats.
//!
//! On the CUDA backend each repeat is timed with two CUDA events (CU_EVENT_DEFAULT) recorded on the
//! runner's stream around the queued work: stream time, without host launch gaps before the first
//! kernel. Elsewhere each repeat is timed on the host between two `Backend::synchronize()` calls
//! (a no-op on the CPU).
use std::sync::Arc;
use std::time::Instant;

use crate::backend::gpu::cuda::CudaBackend;
use crate::backend::select::DeviceSpec;
use crate::backend::Backend;
use crate::error::Result;

/// Times the work a closure queues on a device stream.
pub trait EventTimer: Send + Sync {
    /// Seconds of stream time taken by the work `f` queues.
    fn time_s(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64>;
}

impl EventTimer for CudaBackend {
    fn time_s(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        Ok(self.runner().time_ms(f)? as f64 / 1e3)
    }
}

/// A backend plus, on CUDA, its event timer.
#[derive(Clone)]
pub struct BenchDevice {
    pub backend: Arc<dyn Backend>,
    pub events: Option<Arc<dyn EventTimer>>,
}

impl BenchDevice {
    pub fn cpu() -> Self {
        BenchDevice {
            backend: Arc::new(crate::backend::cpu::CpuBackend::new()),
            events: None,
        }
    }
    /// Like `backend::select::select`, keeping the CUDA backend's event timer.
    pub fn open(spec: DeviceSpec) -> Result<Self> {
        match spec {
            DeviceSpec::Cpu => Ok(Self::cpu()),
            DeviceSpec::Cuda(i) => {
                let cb = Arc::new(CudaBackend::cuda(i)?);
                Ok(BenchDevice {
                    backend: cb.clone(),
                    events: Some(cb),
                })
            }
            DeviceSpec::Auto => Self::open(DeviceSpec::Cuda(0)).or_else(|e| {
                eprintln!("fmp-engine: no usable GPU ({e}); falling back to the CPU backend");
                Ok(Self::cpu())
            }),
        }
    }
    /// Time one run of `f` (events on CUDA, else host clock around synchronize).
    pub fn time_once(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        match &self.events {
            Some(ev) => ev.time_s(f),
            None => {
                let t = Instant::now();
                f()?;
                self.backend.synchronize()?;
                Ok(t.elapsed().as_secs_f64())
            }
        }
    }
    pub fn clock(&self) -> &'static str {
        match (&self.events, self.backend.is_gpu()) {
            (Some(_), _) => "cuda events",
            (None, true) => "host+synchronize",
            (None, false) => "host",
        }
    }
}

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
pub fn time_op(dev: &BenchDevice, r: Repeats, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    let warm = Instant::now();
    for _ in 0..r.warmup {
        f()?;
        if warm.elapsed().as_secs_f64() > r.max_seconds {
            break;
        }
    }
    dev.backend.synchronize()?;
    let mut samples = Vec::with_capacity(r.repeats);
    let start_all = Instant::now();
    for _ in 0..r.repeats {
        samples.push(dev.time_once(&mut f)?);
        if start_all.elapsed().as_secs_f64() > r.max_seconds {
            break;
        }
    }
    Ok(Stats::from_samples(samples, dev.clock()))
}
