//! `fmp-engine scan WEIGHTS`: FRG over every conv feature map, per-layer selection, JSON report.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::fmp::frg::{scan, ScanOptions};
use fmp_engine::fmp::pipeline::{find_data, load_clean, load_model, progress_bar, scan_samples};
use fmp_engine::fmp::select::{ReportModel, ReportSettings, ReportTotals, ScanReport};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::check::{int_in, real_in, seed, MAX_CHANNELS, MAX_SAMPLES};
use super::common::DeviceArgs;

/// Scan settings shared by `scan`, `defend` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScanArgs {
    /// Clean images scoring every feature map (the reference uses one batch of 32).
    #[arg(long, default_value_t = 32, value_parser = int_in::<usize>(1, MAX_SAMPLES))]
    pub samples: usize,
    /// Prune floor(C/p) channels per conv [default: min(64, base width): 64 for the paper's width-64
    /// model; for narrower models the base width, so each conv loses as many channels as in the paper
    /// (1, 2, 4, 8 per conv of layers 1-4: 75 in all)].
    #[arg(long, value_parser = int_in::<usize>(1, MAX_CHANNELS))]
    pub p: Option<usize>,
    /// Initial random step alpha (`1/255` or `0.0039`).
    #[arg(long, default_value = "1/255", value_parser = real_in(0.0, true, 1.0, false))]
    pub alpha: f32,
    /// Adversarial step eps (`4/255` or `0.0157`).
    #[arg(long, default_value = "4/255", value_parser = real_in(0.0, true, 1.0, false))]
    pub eps: f32,
    /// Seed of X0's random signs and of the choice of scan images.
    #[arg(long, default_value_t = 0, value_parser = seed)]
    pub seed: u64,
    /// Apply rankings in registration order as the reference code does (its defect 4).
    #[arg(long)]
    pub reference_order: bool,
    /// Channels per batched chunk [default: sized from the backend's memory].
    #[arg(long, value_parser = int_in::<usize>(1, MAX_CHANNELS))]
    pub chunk: Option<usize>,
    /// Use the plain one-channel-at-a-time loop (slow; for checking).
    #[arg(long)]
    pub naive: bool,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors, PyTorch state_dict names).
    pub weights: PathBuf,
    /// Dataset folder [default: $FMP_DATA, ../shared/data, the engine's cache].
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Report file.
    #[arg(long, default_value = "report.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    super::check::output_path(&a.out, "--out")?;
    let backend = a.device.backend()?;
    let dir = find_data(a.data.as_deref())?;
    let (clean, kind) = load_clean(&dir)?;
    let model = load_model(backend.clone(), &a.weights, kind)?;
    let report = run_scan(&model, &a.weights, &clean, &dir, &a.scan, &backend)?;
    report.save(&a.out)?;
    print_summary(&report);
    println!("report: {}", a.out.display());
    Ok(())
}

/// Scan `model` with images drawn from `clean`; prints nothing but the progress bar.
pub fn run_scan(
    model: &PreActResNet18,
    weights: &Path,
    clean: &LabeledImages,
    data_dir: &Path,
    s: &ScanArgs,
    backend: &Arc<dyn Backend>,
) -> Result<ScanReport> {
    let width = model.config().width;
    let p = s.p.unwrap_or(width.min(64));
    let (pixels, labels) = scan_samples(clean, s.samples, s.seed)?;
    let opts = ScanOptions {
        p,
        alpha: s.alpha,
        eps: s.eps,
        seed: s.seed,
        reference_order: s.reference_order,
        chunk: s.chunk,
        naive: s.naive,
    };
    let total: usize = model.convs().iter().map(|c| c.params.c_out as usize).sum();
    let pb = progress_bar(total as u64, "FRG scan");
    let t0 = Instant::now();
    let (convs, chunk) = scan(model, &pixels, &labels, &opts, &mut |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let totals = ReportTotals {
        convs: convs.len(),
        feature_maps: total,
        selected: convs.iter().map(|c| c.selected.len()).sum(),
    };
    Ok(ScanReport {
        model: ReportModel {
            path: weights.display().to_string(),
            width,
            num_classes: model.config().num_classes,
        },
        settings: ReportSettings {
            samples: s.samples,
            p,
            alpha: s.alpha,
            eps: s.eps,
            seed: s.seed,
            reference_order: s.reference_order,
            data: data_dir.display().to_string(),
            device: backend.name(),
            chunk_channels: if s.naive { 0 } else { chunk },
        },
        convs,
        totals,
        seconds,
    })
}

pub fn print_summary(r: &ScanReport) {
    println!(
        "FRG scan: {} feature maps in {} convs, {} samples, eps {:.5}, {:.1} s on {}; selected {} (p = {})",
        r.totals.feature_maps, r.totals.convs, r.settings.samples, r.settings.eps, r.seconds, r.settings.device, r.totals.selected, r.settings.p
    );
    println!(
        "  {:<22} {:>5} {:>9} {:>9}  selected (score)",
        "conv", "C", "mean acc", "min acc"
    );
    for c in &r.convs {
        let mean = c.scores.iter().sum::<f32>() / c.channels.max(1) as f32;
        let min = c.scores.iter().cloned().fold(f32::INFINITY, f32::min);
        let sel: Vec<String> = c
            .selected
            .iter()
            .take(6)
            .map(|&i| format!("{i} ({:.2})", c.scores[i]))
            .collect();
        let more = if c.selected.len() > 6 {
            format!(" +{}", c.selected.len() - 6)
        } else {
            String::new()
        };
        println!(
            "  {:<22} {:>5} {:>9.3} {:>9.3}  {}{}",
            c.name,
            c.channels,
            mean,
            min,
            sel.join(", "),
            more
        );
    }
}
