//! FRG scan benchmark: times the batched scan (spec section 3) conv by conv on a model with random (or
//! given) weights, counts its FLOPs (`count::Arch::scan`), and projects the full 4,800-channel scan.
//!
//! Per conv: the prefix traces of X and X0 are timed once; then `channels` channels (default: one
//! chunk) are scored in chunks of K (sized by `fmp::frg::chunk_channels`) with the scan's own step,
//! `fmp::frg::score_channels`: `frg_seed` -> `input_grad(OneHot)` -> `sign_step` -> `forward` -> logits
//! to the host, argmax and true-class probability. The projection for
//! a conv is prefix time + C x (measured time per channel); the full-scan projection is their sum.
//! Timing is host wall clock around `synchronize()` (each chunk ends with a device-to-host copy).
use std::path::PathBuf;
use std::time::Instant;

use super::count::{Arch, OpCost};
use super::device::{ceilings_for, Ceilings};
use super::kernels::{fmt_time, git_commit};
use super::profile::{profiled, ProfileEntry, ProfileTotals};
use super::timing::BenchDevice;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::fmp::frg::{chunk_channels, score_channels, LayerScores};
use crate::model::{ModelConfig, PreActResNet18};
use crate::rng::{Rng, Stream};
use crate::tensor::Tensor;

/// What to time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScanBenchConfig {
    pub width: usize,
    /// B: images scored per channel.
    pub samples: usize,
    /// Only the first N convs (None: all 20).
    pub layers: Option<usize>,
    /// Channels timed per conv (None: one chunk).
    pub channels: Option<usize>,
    /// Channels per chunk (None: sized from the backend's memory budget).
    pub chunk: Option<usize>,
    pub alpha: f32,
    pub eps: f32,
    pub seed: u64,
    /// Load these weights (safetensors, CIFAR-10 normalisation) instead of a random model.
    pub weights: Option<PathBuf>,
    /// Save the model used (e.g. for `benches/peers/frg_reference.py --weights`).
    pub save_weights: Option<PathBuf>,
    /// Record the chunk steps op by op (`bench::profile`); costs a sync per op on a GPU.
    pub profile: bool,
}

impl Default for ScanBenchConfig {
    fn default() -> Self {
        ScanBenchConfig {
            width: 64,
            samples: 32,
            layers: None,
            channels: None,
            chunk: None,
            alpha: 1.0 / 255.0,
            eps: 4.0 / 255.0,
            seed: 0,
            weights: None,
            save_weights: None,
            profile: false,
        }
    }
}

/// Timing of one conv's scan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScanConvResult {
    pub conv: usize,
    pub name: String,
    pub out_channels: usize,
    pub channels_timed: usize,
    pub chunk: usize,
    /// Prefix traces of X and X0.
    pub prefix_s: f64,
    /// The timed channels' chunks.
    pub channels_s: f64,
    pub per_channel_s: f64,
    /// prefix + out_channels x per channel.
    pub projected_s: f64,
    /// Counted work of the timed part.
    pub counted: OpCost,
    pub gflops: f64,
    /// Accuracy on the adversarial images of each timed channel (a sanity value, not a result).
    pub scores: Vec<f32>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ScanBenchReport {
    pub backend: String,
    pub ceilings: Ceilings,
    pub config: ScanBenchConfig,
    pub commit: Option<String>,
    pub unix_time: u64,
    pub samples: usize,
    pub channels_timed: usize,
    pub seconds_timed: f64,
    /// (channel, sample) pairs scored per second over the timed work (prefixes included).
    pub channel_samples_per_s: f64,
    /// Counted GFLOP/s of the timed work.
    pub achieved_gflops: f64,
    pub frac_peak_flops: f64,
    /// Channels of the scanned convs (4,800 for all of PreActResNet18).
    pub scan_channels: usize,
    pub projected_full_scan_s: f64,
    pub counted_full_scan_flops: u64,
    /// Counted full-scan FLOPs / peak FLOP/s: the compute roofline's lower bound on the scan's time.
    pub roofline_full_scan_s: f64,
    pub per_conv: Vec<ScanConvResult>,
    /// With `profile`: the timed chunk steps (prefixes excluded) by op and shape.
    pub profile: Option<Vec<ProfileEntry>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Score channels `c0..c0+k` of the traced conv with the scan's own chunk step; returns the accuracies.
#[allow(clippy::too_many_arguments)]
fn score_chunk(
    model: &PreActResNet18,
    tx: &crate::model::Trace,
    tx0: &crate::model::Trace,
    x0: &Tensor,
    labels: &[u32],
    c0: usize,
    k: usize,
    eps: f32,
) -> Result<Vec<f32>> {
    let mut res = LayerScores::default();
    score_channels(model, tx, tx0, x0, labels, c0, k, eps, 1, &mut res)?;
    Ok(res.scores)
}

/// Build the model for `cfg` on `dev`.
pub fn bench_model(dev: &BenchDevice, cfg: &ScanBenchConfig) -> Result<PreActResNet18> {
    let model = match &cfg.weights {
        Some(p) => PreActResNet18::load(dev.backend.clone(), p, DatasetKind::Cifar10)?.0,
        None => PreActResNet18::new_random(
            dev.backend.clone(),
            ModelConfig::cifar10(cfg.width),
            cfg.seed,
        )?,
    };
    if let Some(p) = &cfg.save_weights {
        model.save(p)?;
    }
    Ok(model)
}

/// Time the scan of `cfg` on `dev`; `progress` gets each conv's result as it finishes.
pub fn run_scan_bench(
    dev: &BenchDevice,
    cfg: &ScanBenchConfig,
    mut progress: impl FnMut(&ScanConvResult),
) -> Result<ScanBenchReport> {
    let (profiled, prof) = profiled(dev, cfg.profile);
    let dev = profiled.as_ref().unwrap_or(dev);
    let mut recorded = ProfileTotals::default();
    let be = dev.backend.clone();
    let model = bench_model(dev, cfg)?;
    let mc = model.config().clone();
    let arch = Arch::preact_resnet18(mc.width, mc.num_classes);
    // The counters must describe the model being timed.
    let ours: Vec<(String, crate::backend::ConvParams)> = model
        .convs()
        .iter()
        .map(|c| (c.name.clone(), c.params))
        .collect();
    if ours != arch.convs() {
        return Err(Error::Msg("bench scan: the model's convs differ from bench::count::Arch; the FLOP counts would be wrong".into()));
    }
    let b = cfg.samples.max(1);
    let mut rng = Rng::stream(Stream::Bench, cfg.seed ^ 0x5CA7);
    let pixels: Vec<f32> = (0..b * 3 * 1024).map(|_| rng.uniform()).collect();
    let labels: Vec<u32> = (0..b)
        .map(|_| rng.below_mod(mc.num_classes) as u32)
        .collect();
    let x0h: Vec<f32> = pixels
        .iter()
        .map(|&v| (v + cfg.alpha * if rng.uniform() < 0.5 { -1.0 } else { 1.0 }).clamp(0.0, 1.0))
        .collect();
    let x = be.from_host(&pixels, &[b, 3, 32, 32])?;
    let x0 = be.from_host(&x0h, &[b, 3, 32, 32])?;
    let n_convs = cfg.layers.unwrap_or(20).clamp(1, 20);

    // Warm-up (kernel compilation, allocator pools): one small chunk of the first conv, untimed.
    {
        let tx = model.forward_trace(&x, 0)?;
        let tx0 = model.forward_trace(&x0, 0)?;
        score_chunk(&model, &tx, &tx0, &x0, &labels, 0, 1, cfg.eps)?;
        be.synchronize()?;
    }

    let mut per_conv = Vec::new();
    for l in 0..n_convs {
        let info = &model.convs()[l];
        let c_out = info.params.c_out as usize;
        let chunk = cfg
            .chunk
            .unwrap_or_else(|| chunk_channels(&model, l, b))
            .clamp(1, c_out);
        let n = cfg.channels.unwrap_or(chunk).clamp(1, c_out);
        be.synchronize()?;
        let t = Instant::now();
        let tx = model.forward_trace(&x, l)?;
        let tx0 = model.forward_trace(&x0, l)?;
        be.synchronize()?;
        let prefix_s = t.elapsed().as_secs_f64();
        if let Some(p) = &prof {
            p.take(); // the warm-up and the prefixes are not the chunk step
        }
        let t = Instant::now();
        let mut scores = Vec::with_capacity(n);
        let mut c0 = 0;
        while c0 < n {
            let k = chunk.min(n - c0);
            scores.extend(score_chunk(
                &model, &tx, &tx0, &x0, &labels, c0, k, cfg.eps,
            )?);
            c0 += k;
        }
        be.synchronize()?;
        let channels_s = t.elapsed().as_secs_f64();
        if let Some(p) = &prof {
            recorded.add(p.take());
        }
        let counted = arch.scan(b as u64, &[l], Some(n)).total();
        let per_channel_s = channels_s / n as f64;
        let r = ScanConvResult {
            conv: l,
            name: info.name.clone(),
            out_channels: c_out,
            channels_timed: n,
            chunk,
            prefix_s,
            channels_s,
            per_channel_s,
            projected_s: prefix_s + c_out as f64 * per_channel_s,
            counted,
            gflops: counted.flops as f64 / (prefix_s + channels_s) / 1e9,
            scores,
        };
        progress(&r);
        per_conv.push(r);
    }
    let ceil = ceilings_for(&be.name(), be.is_gpu());
    let seconds_timed: f64 = per_conv.iter().map(|r| r.prefix_s + r.channels_s).sum();
    let channels_timed: usize = per_conv.iter().map(|r| r.channels_timed).sum();
    let timed_flops: u64 = per_conv.iter().map(|r| r.counted.flops).sum();
    let all: Vec<usize> = (0..n_convs).collect();
    let full = arch.scan(b as u64, &all, None);
    let achieved = timed_flops as f64 / seconds_timed;
    Ok(ScanBenchReport {
        backend: be.name(),
        commit: git_commit(),
        unix_time: now_unix(),
        samples: b,
        channels_timed,
        seconds_timed,
        channel_samples_per_s: (channels_timed * b) as f64 / seconds_timed,
        achieved_gflops: achieved / 1e9,
        frac_peak_flops: achieved / ceil.peak_flops,
        scan_channels: full.channels() as usize,
        projected_full_scan_s: per_conv.iter().map(|r| r.projected_s).sum(),
        counted_full_scan_flops: full.total().flops,
        roofline_full_scan_s: full.total().flops as f64 / ceil.peak_flops,
        ceilings: ceil,
        config: cfg.clone(),
        per_conv,
        profile: prof.map(|_| recorded.into_sorted()),
    })
}

/// One line per conv.
pub fn conv_line(r: &ScanConvResult) -> String {
    format!(
        "{:<22} {:>4}/{:<4} ch (chunk {:>3})  prefix {:>10}  {:>10}/channel  {:>8.2} GFLOP/s  projected {:>10}",
        r.name,
        r.channels_timed,
        r.out_channels,
        r.chunk,
        fmt_time(r.prefix_s),
        fmt_time(r.per_channel_s),
        r.gflops,
        fmt_time(r.projected_s)
    )
}

/// Summary lines.
pub fn summary(rep: &ScanBenchReport) -> String {
    format!(
        "# {} channels x {} samples timed in {}: {:.1} channel-samples/s, {:.2} GFLOP/s counted ({:.2}% of peak)\n\
         # projected {}-channel scan: {} ({:.2} h); counted {:.1} TFLOP, compute-roofline bound {}\n\
         # ceilings: {}",
        rep.channels_timed,
        rep.samples,
        fmt_time(rep.seconds_timed),
        rep.channel_samples_per_s,
        rep.achieved_gflops,
        100.0 * rep.frac_peak_flops,
        rep.scan_channels,
        fmt_time(rep.projected_full_scan_s),
        rep.projected_full_scan_s / 3600.0,
        rep.counted_full_scan_flops as f64 / 1e12,
        fmt_time(rep.roofline_full_scan_s),
        rep.ceilings.source
    )
}
