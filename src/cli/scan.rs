//! `fmp-engine scan WEIGHTS`: FRG over every conv feature map, per-layer selection, JSON report.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::fmp::frg::{all_slices, check_scan_inputs, scan_slices, ScanOptions};
use fmp_engine::fmp::journal::{
    conv_layout, images_md5, journal_path, merge, select, shard_slices, weights_md5, PartialScan,
    ScanIdentity,
};
use fmp_engine::fmp::pipeline::{find_data, load_clean, load_model, progress_bar, scan_samples};
use fmp_engine::fmp::select::{ReportModel, ReportSettings, ReportTotals, ScanReport};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::{Error, Result};

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
    /// Report file (with --shard: this shard's partial report, for `fmp-engine merge`). Each finished
    /// conv is journaled to `<OUT>.journal.json` until the report is written.
    #[arg(long, default_value = "report.json")]
    pub out: PathBuf,
    /// Continue an interrupted scan from `<OUT>.journal.json` (same weights, images and settings only).
    #[arg(long)]
    pub resume: bool,
    /// Score only the I-th of N cost-balanced slices of the feature maps (1 <= I <= N) and write a partial
    /// report; combine the N parts with `fmp-engine merge`.
    #[arg(long, value_parser = super::check::shard)]
    pub shard: Option<(usize, usize)>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    super::check::output_path(&a.out, "--out")?;
    let lock = super::check::lock_output(&a.out, "--out")?;
    let journal = journal_path(&a.out);
    lock.remove_stale_temps(&[&a.out, &journal]);
    if journal.exists() && !a.resume {
        return Err(Error::InvalidArgument(format!(
            "{} holds the journal of an interrupted scan writing {}: pass --resume to continue it, or delete it to start over",
            journal.display(),
            a.out.display()
        )));
    }
    super::interrupt::install();
    let backend = a.device.backend()?;
    let dir = find_data(a.data.as_deref())?;
    let (clean, kind) = load_clean(&dir)?;
    let model = load_model(backend.clone(), &a.weights, kind)?;
    let j = JournalOpts {
        path: journal,
        resume: a.resume,
        shard: a.shard,
    };
    match run_scan_parts(
        &model,
        &a.weights,
        &clean,
        &dir,
        &a.scan,
        &backend,
        Some(&j),
    )? {
        ScanOutcome::Report(report) => {
            report.save(&a.out)?;
            print_summary(&report);
            println!("report: {}", a.out.display());
        }
        ScanOutcome::Shard(part) => {
            part.save(&a.out)?;
            let (i, n) = part.shard;
            println!(
                "shard {i}/{n}: {} feature maps in {} slices, {:.1} s; partial report: {}",
                part.channels_done(),
                part.done.len(),
                part.done.iter().map(|d| d.seconds).sum::<f64>(),
                a.out.display()
            );
            println!(
                "combine the {n} parts with: fmp-engine merge PART1 ... PART{n} --out report.json"
            );
        }
    }
    let _ = std::fs::remove_file(&j.path);
    Ok(())
}

/// Where and how `scan` journals.
pub struct JournalOpts {
    /// `<out>.journal.json`.
    pub path: PathBuf,
    /// Continue from the journal when it exists.
    pub resume: bool,
    /// (I, N): score only shard I of N.
    pub shard: Option<(usize, usize)>,
}

/// A whole scan's report, or one shard's partial scan.
pub enum ScanOutcome {
    Report(ScanReport),
    Shard(PartialScan),
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
    match run_scan_parts(model, weights, clean, data_dir, s, backend, None)? {
        ScanOutcome::Report(r) => Ok(r),
        ScanOutcome::Shard(_) => unreachable!("no shard without a journal"),
    }
}

/// The scan as slices (`fmp::journal`): with `journal`, each finished slice is saved to `journal.path`
/// (and a matching journal is resumed), and `journal.shard` limits the scan to one shard.
pub fn run_scan_parts(
    model: &PreActResNet18,
    weights: &Path,
    clean: &LabeledImages,
    data_dir: &Path,
    s: &ScanArgs,
    backend: &Arc<dyn Backend>,
    journal: Option<&JournalOpts>,
) -> Result<ScanOutcome> {
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
    check_scan_inputs(model, &pixels, &labels, &opts)?;
    let identity = ScanIdentity {
        weights_md5: weights_md5(weights)?,
        images_md5: images_md5(&pixels, &labels),
        width,
        num_classes: model.config().num_classes,
        convs: conv_layout(model),
        samples: s.samples,
        p,
        alpha: s.alpha,
        eps: s.eps,
        seed: s.seed,
        reference_order: s.reference_order,
    };
    let shard = journal.and_then(|j| j.shard);
    let plan = match shard {
        Some((i, n)) => shard_slices(model, labels.len(), i, n)?,
        None => all_slices(model),
    };
    let mut part = PartialScan::new(
        identity,
        shard.unwrap_or((1, 1)),
        plan,
        weights.display().to_string(),
        data_dir.display().to_string(),
        backend.name(),
    );
    if let Some(j) = journal.filter(|j| j.resume) {
        if j.path.exists() {
            let old = PartialScan::load(&j.path)?;
            let diff = old.identity.differences(&part.identity);
            if !diff.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{} is the journal of a different scan ({}): delete it to start over, or resume with the same weights, data and settings",
                    j.path.display(),
                    diff.join("; ")
                )));
            }
            if old.shard != part.shard || old.plan != part.plan {
                return Err(Error::InvalidArgument(format!(
                    "{} is the journal of shard {}/{}, not of {}/{}",
                    j.path.display(),
                    old.shard.0,
                    old.shard.1,
                    part.shard.0,
                    part.shard.1
                )));
            }
            println!(
                "resuming the scan from {}: {} of {} feature maps already scored",
                j.path.display(),
                old.channels_done(),
                old.channels_planned()
            );
            part.done = old.done;
            part.complete = old.complete;
        } else {
            println!(
                "--resume: no journal at {}; starting from the beginning",
                j.path.display()
            );
        }
    }
    let todo = part.remaining();
    let total: usize = todo.iter().map(|s| s.end - s.start).sum();
    let pb = progress_bar(total as u64, "FRG scan");
    let mut t0 = Instant::now();
    scan_slices(
        model,
        &pixels,
        &labels,
        &opts,
        &todo,
        &mut |slice, ls, k| {
            part.push(slice, ls, k, t0.elapsed().as_secs_f64());
            t0 = Instant::now();
            if let Some(j) = journal {
                part.save(&j.path)?;
                super::interrupt::keep(format!(
                    "the journal {} ({} of {} feature maps scored); continue with the same command and --resume",
                    j.path.display(),
                    part.channels_done(),
                    part.channels_planned()
                ));
                if super::interrupt::requested() {
                    return Err(super::interrupt::stopped());
                }
            }
            Ok(())
        },
        &mut |k| pb.inc(k as u64),
    )?;
    pb.finish_and_clear();
    if shard.is_some() {
        return Ok(ScanOutcome::Shard(part));
    }
    Ok(ScanOutcome::Report(report_from_parts(
        &[part],
        &["this scan".to_string()],
    )?))
}

/// The report of one scan from its complete partial scans (one for an unsharded scan, N shards for
/// `merge`): the same selection either way.
pub fn report_from_parts(parts: &[PartialScan], names: &[String]) -> Result<ScanReport> {
    let (identity, scores) = merge(parts, names)?;
    let convs = select(&identity, scores)?;
    let mut devices: Vec<String> = parts.iter().map(|p| p.device.clone()).collect();
    devices.sort();
    devices.dedup();
    let slices = parts.iter().flat_map(|p| &p.done);
    let chunk = slices.clone().map(|d| d.chunk).max().unwrap_or(0);
    let seconds = slices.map(|d| d.seconds).sum();
    let totals = ReportTotals {
        convs: convs.len(),
        feature_maps: convs.iter().map(|c| c.channels).sum(),
        selected: convs.iter().map(|c| c.selected.len()).sum(),
    };
    Ok(ScanReport {
        model: ReportModel {
            path: parts[0].weights.clone(),
            width: identity.width,
            num_classes: identity.num_classes,
        },
        settings: ReportSettings {
            samples: identity.samples,
            p: identity.p,
            alpha: identity.alpha,
            eps: identity.eps,
            seed: identity.seed,
            reference_order: identity.reference_order,
            data: parts[0].data.clone(),
            device: devices.join(","),
            chunk_channels: chunk,
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
