//! `fmp-engine scan WEIGHTS`: FRG over every conv feature map, per-layer selection, JSON report.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::controls::{trigger_overlap, trigger_sensitivity, TriggerDiagnostic};
use fmp_engine::fmp::frg::{all_slices, check_scan_inputs, scan_slices, ScanOptions};
use fmp_engine::fmp::journal::{
    conv_layout, images_md5, journal_path, merge, select, shard_slices, weights_md5, PartialScan,
    ScanIdentity,
};
use fmp_engine::fmp::pipeline::{eval_batch, progress_bar, scan_samples};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::select::{
    ReportModel, ReportSettings, ReportTotals, ScanParams, ScanReport, SCAN_SCHEMA,
};
use fmp_engine::fmp::stability::{scan_repeated, Aggregate, RepeatOptions, ScoreKind};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::{Error, Result};

use super::check::{
    int_in, real_in, seed, MAX_CHANNELS, MAX_IMAGES, MAX_REPEATS, MAX_SAMPLES, MAX_STEPS,
};
use super::common::{DataArgs, JsonDeviceArgs, Loaded};

/// The recipe `defend` and `demo` use unless `--recipe` says otherwise: the study's best
/// (docs/STUDY.md). `scan` keeps the paper's (one draw: resumable and shardable).
pub const DEFEND_RECIPE: Recipe = Recipe::Margin4;

/// Named scan settings: the defaults of `--samples`, `--score` and `--repeats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    /// The paper's: one batch of 32 images, accuracy score, one draw.
    Paper,
    /// 4 independent draws of 32 images and X0 noise, mean logit margin (ties by accuracy),
    /// averaged: a continuous score from 128 images (docs/STUDY.md).
    Margin4,
}

impl Recipe {
    pub(super) fn name(self) -> &'static str {
        match self {
            Recipe::Paper => "paper",
            Recipe::Margin4 => "margin4",
        }
    }
    pub(super) fn samples(self) -> usize {
        32
    }
    pub(super) fn score(self) -> ScoreKind {
        match self {
            Recipe::Paper => ScoreKind::Acc,
            Recipe::Margin4 => ScoreKind::Margin,
        }
    }
    pub(super) fn repeats(self) -> usize {
        match self {
            Recipe::Paper => 1,
            Recipe::Margin4 => 4,
        }
    }
}

/// Scan settings shared by `scan`, `defend` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScanArgs {
    /// Scan recipe: sets the defaults of --samples, --score and --repeats (each flag given
    /// overrides its part). paper: 32 images, accuracy score, one draw; margin4: 4 draws of 32,
    /// mean logit margin [default: paper for `scan`; for `defend` and `demo` the study's best
    /// (docs/STUDY.md)].
    #[arg(long, value_enum)]
    pub recipe: Option<Recipe>,
    /// Clean images scoring every feature map, per draw [default: the recipe's, 32 (the reference
    /// uses one batch of 32)].
    #[arg(long = "samples", value_parser = int_in::<usize>(1, MAX_SAMPLES))]
    pub samples_flag: Option<usize>,
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
    /// Independent draws of scan images and X0 noise (seeds derived from --seed); the report gives each
    /// map's aggregate score and spread and the agreement between repeats, and selects from the
    /// aggregate [default: the recipe's: paper 1, margin4 4].
    #[arg(long = "repeats", value_parser = int_in::<usize>(1, MAX_REPEATS))]
    pub repeats_flag: Option<usize>,
    /// Selection score: acc (accuracy, ties by true-class probability: the paper), prob (mean true-class
    /// probability, ties by accuracy) or margin (mean logit margin, ties by accuracy) [default: the
    /// recipe's: paper acc, margin4 margin].
    #[arg(long = "score")]
    pub score_flag: Option<ScoreKind>,
    /// How repeats are combined per map: mean or median.
    #[arg(long, default_value = "mean")]
    pub aggregate: Aggregate,
    /// FRG sign steps per feature map (1: the paper's single step).
    #[arg(long, default_value_t = 1, value_parser = int_in::<usize>(1, MAX_STEPS))]
    pub steps: usize,
}

impl ScanArgs {
    /// --recipe, else the paper's.
    pub fn recipe(&self) -> Recipe {
        self.recipe.unwrap_or(Recipe::Paper)
    }
    /// The same settings with `r` as the recipe when --recipe was not given.
    pub fn with_default_recipe(self, r: Recipe) -> Self {
        ScanArgs {
            recipe: Some(self.recipe.unwrap_or(r)),
            ..self
        }
    }
    /// Clean images per draw: --samples, else the recipe's.
    pub fn samples(&self) -> usize {
        self.samples_flag.unwrap_or(self.recipe().samples())
    }
    /// The report's and the journal identity's scan parameters, with the scan's p.
    pub fn scan_params(&self, p: usize) -> ScanParams {
        ScanParams {
            samples: self.samples(),
            p,
            alpha: self.alpha,
            eps: self.eps,
            seed: self.seed,
            reference_order: self.reference_order,
        }
    }
    /// Draws: --repeats, else the recipe's.
    pub fn repeats(&self) -> usize {
        self.repeats_flag.unwrap_or(self.recipe().repeats())
    }
    /// Selection score: --score, else the recipe's.
    pub fn score(&self) -> ScoreKind {
        self.score_flag.unwrap_or(self.recipe().score())
    }

    /// The paper's recipe (32 samples, accuracy score, one draw, one step) with the given seed and p.
    pub fn paper(seed: u64, p: Option<usize>) -> Self {
        ScanArgs {
            recipe: Some(Recipe::Paper),
            samples_flag: None,
            p,
            alpha: 1.0 / 255.0,
            eps: 4.0 / 255.0,
            seed,
            reference_order: false,
            chunk: None,
            naive: false,
            repeats_flag: None,
            score_flag: None,
            aggregate: Aggregate::Mean,
            steps: 1,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors, PyTorch state_dict names).
    pub weights: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Known attack (badnets, blended, lowfreq, wanet): also report how many selected maps are among the
    /// maps most sensitive to its trigger, against chance.
    #[arg(long)]
    pub attack: Option<AttackKind>,
    /// Clean images the trigger diagnostic measures on.
    #[arg(long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub trigger_images: usize,
    /// Report file (with --shard: this shard's partial report, for `fmp-engine merge`). Each finished
    /// conv is journaled to `<OUT>.journal.json` until the report is written (with --repeats 1).
    #[arg(long, default_value = "report.json")]
    pub out: PathBuf,
    /// Continue an interrupted scan from `<OUT>.journal.json` (same weights, images and settings only;
    /// not with --repeats > 1, which is not journaled).
    #[arg(long)]
    pub resume: bool,
    /// Score only the I-th of N cost-balanced slices of the feature maps (1 <= I <= N) and write a partial
    /// report; combine the N parts with `fmp-engine merge` (not with --repeats > 1 or --attack).
    #[arg(long, value_parser = super::check::shard)]
    pub shard: Option<(usize, usize)>,
    /// Also draw the scores as an SVG: a row per conv (execution order), every feature map's score, the
    /// selected ones marked.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub common: JsonDeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    check_journal_flags(&a.scan, a.resume, a.shard)?;
    if a.shard.is_some() {
        for (given, flag) in [
            (a.attack.is_some(), "--attack"),
            (a.plot.is_some(), "--plot"),
        ] {
            if given {
                return Err(Error::InvalidArgument(format!(
                    "{flag} needs the whole scan's report; a --shard writes a partial one: run {flag} on the report `fmp-engine merge` writes"
                )));
            }
        }
    }
    super::check::output_path(&a.out, "--out")?;
    if let Some(p) = &a.plot {
        super::check::output_path(p, "--plot")?;
    }
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
    if a.scan.repeats() == 1 {
        // journaled: the first Ctrl-C stops after the current slice is saved (with --repeats > 1
        // nothing is journaled, and Ctrl-C stops at once, leaving no output)
        super::interrupt::install();
    }
    let (json, loaded) = Loaded::start(a.common.json, &a.common.device, &a.data, &a.weights)?;
    let Loaded {
        backend,
        dir,
        clean,
        model,
        ..
    } = loaded;
    let j = JournalOpts {
        path: journal,
        resume: a.resume,
        shard: a.shard,
    };
    match run_scan(
        &model,
        &a.weights,
        &clean,
        &dir,
        &a.scan,
        &backend,
        Some(&j),
    )? {
        ScanOutcome::Report(mut report) => {
            if let Some(k) = a.attack {
                report.trigger = Some(trigger_diagnostic(
                    &model,
                    &clean,
                    &report,
                    &Attack::new(k, 0),
                    a.trigger_images,
                    a.scan.seed,
                )?);
            }
            report.save(&a.out)?;
            let _ = std::fs::remove_file(&j.path);
            print_summary(&report);
            println!("report: {}", a.out.display());
            if let Some(p) = &a.plot {
                fmp_engine::report::plot::write_scan_plot(&report, p)?;
                println!("plot: {}", p.display());
            }
            json.emit(&report_json(&report, &a.out, a.plot.as_deref()))
        }
        ScanOutcome::Shard(part) => {
            part.save(&a.out)?;
            let _ = std::fs::remove_file(&j.path);
            let (i, n) = part.shard;
            let seconds: f64 = part.done.iter().map(|d| d.seconds).sum();
            println!(
                "shard {i}/{n}: {} feature maps in {} slices, {seconds:.1} s; partial report: {}",
                part.channels_done(),
                part.done.len(),
                a.out.display()
            );
            println!(
                "combine the {n} parts with: fmp-engine merge PART1 ... PART{n} --out report.json"
            );
            json.emit(&serde_json::json!({
                "partial_report": a.out.display().to_string(),
                "shard": [i, n],
                "feature_maps": part.channels_done(),
                "slices": part.done.len(),
                "seconds": seconds,
            }))
        }
    }
}

/// What `scan --json` (and `merge --json`) prints for a whole report written to `out`.
pub fn report_json(report: &ScanReport, out: &Path, plot: Option<&Path>) -> serde_json::Value {
    serde_json::json!({
        "schema": report.schema,
        "report": out.display().to_string(),
        "plot": plot.map(|p| p.display().to_string()),
        "model": report.model,
        "settings": report.settings,
        "totals": report.totals,
        "seconds": report.seconds,
        "selected": report
            .convs
            .iter()
            .map(|c| (c.name.clone(), serde_json::json!(c.selected)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
    })
}

/// `--resume` and `--shard` work on one draw of scan images: refuse them with `--repeats` > 1 (whose
/// draws are combined only at the end) rather than journal or split something `merge` cannot rebuild.
pub fn check_journal_flags(
    s: &ScanArgs,
    resume: bool,
    shard: Option<(usize, usize)>,
) -> Result<()> {
    if s.repeats() > 1 {
        // Name where the repeats came from when --repeats was not given.
        let from = match (s.repeats_flag, s.recipe) {
            (None, Some(r)) => format!(" (from --recipe {})", r.name()),
            _ => String::new(),
        };
        for (given, flag) in [(resume, "--resume"), (shard.is_some(), "--shard")] {
            if given {
                return Err(Error::InvalidArgument(format!(
                    "{flag} cannot be combined with --repeats {}{from} (a journal or shard holds one draw of scan images); run the repeats without {flag}, or one scan per --seed",
                    s.repeats()
                )));
            }
        }
    }
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

impl ScanOutcome {
    /// The whole scan's report (what `run_scan` returns without a journal's shard).
    pub fn report(self) -> ScanReport {
        match self {
            ScanOutcome::Report(r) => r,
            ScanOutcome::Shard(_) => unreachable!("no shard without a journal"),
        }
    }
}

/// Scan `model` with images drawn from `clean`; prints nothing but the progress bar. The scan runs as
/// slices (`fmp::journal`): with `journal`, each finished slice is saved to `journal.path` (and a
/// matching journal is resumed), and `journal.shard` limits the scan to one shard.
pub fn run_scan(
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
    let opts = ScanOptions {
        p,
        alpha: s.alpha,
        eps: s.eps,
        seed: s.seed,
        reference_order: s.reference_order,
        chunk: s.chunk,
        naive: s.naive,
        steps: s.steps,
    };
    if s.steps == 0 {
        return Err(Error::InvalidArgument("--steps must be at least 1".into()));
    }
    let ro = RepeatOptions {
        samples: s.samples(),
        repeats: s.repeats(),
        score: s.score(),
        aggregate: s.aggregate,
    };
    if s.repeats() > 1 {
        check_journal_flags(
            s,
            journal.is_some_and(|j| j.resume),
            journal.and_then(|j| j.shard),
        )?;
        return Ok(ScanOutcome::Report(scan_repeats(
            model, weights, data_dir, clean, s, &opts, &ro, backend,
        )?));
    }
    let (pixels, labels) = scan_samples(clean, s.samples(), s.seed)?;
    check_scan_inputs(model, &pixels, &labels, &opts)?;
    let identity = ScanIdentity {
        weights_md5: weights_md5(weights)?,
        images_md5: images_md5(&pixels, &labels),
        width,
        num_classes: model.config().num_classes,
        convs: conv_layout(model),
        params: s.scan_params(p),
        score: s.score().name().into(),
        repeats: s.repeats(),
        aggregate: s.aggregate.name().into(),
        steps: s.steps,
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
        schema: SCAN_SCHEMA,
        model: ReportModel {
            path: parts[0].weights.clone(),
            width: identity.width,
            num_classes: identity.num_classes,
        },
        settings: ReportSettings {
            params: identity.params.clone(),
            data: parts[0].data.clone(),
            device: devices.join(","),
            chunk_channels: chunk,
            score: identity.score.clone(),
            repeats: identity.repeats,
            aggregate: identity.aggregate.clone(),
            steps: identity.steps,
        },
        convs,
        totals,
        seconds,
        stability: None,
        trigger: None,
    })
}

/// `--repeats` > 1: R independent draws scored whole and combined (`stability::scan_repeated`); not
/// journaled (see `check_journal_flags`).
#[allow(clippy::too_many_arguments)]
fn scan_repeats(
    model: &PreActResNet18,
    weights: &Path,
    data_dir: &Path,
    clean: &LabeledImages,
    s: &ScanArgs,
    opts: &ScanOptions,
    ro: &RepeatOptions,
    backend: &Arc<dyn Backend>,
) -> Result<ScanReport> {
    let width = model.config().width;
    let total: usize = model.convs().iter().map(|c| c.params.c_out as usize).sum();
    let pb = progress_bar((total * s.repeats()) as u64, "FRG scan");
    let t0 = Instant::now();
    let (convs, stability, chunk) =
        scan_repeated(model, clean, opts, ro, &mut |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let totals = ReportTotals {
        convs: convs.len(),
        feature_maps: total,
        selected: convs.iter().map(|c| c.selected.len()).sum(),
    };
    Ok(ScanReport {
        schema: SCAN_SCHEMA,
        model: ReportModel {
            path: weights.display().to_string(),
            width,
            num_classes: model.config().num_classes,
        },
        settings: ReportSettings {
            params: s.scan_params(opts.p),
            data: data_dir.display().to_string(),
            device: backend.name(),
            chunk_channels: if s.naive { 0 } else { chunk },
            score: s.score().name().into(),
            repeats: s.repeats(),
            aggregate: s.aggregate.name().into(),
            steps: s.steps,
        },
        convs,
        totals,
        seconds,
        stability,
        trigger: None,
    })
}

/// The trigger diagnostic on `n` clean images (a seeded draw, `Rng::derive(seed, "trigger-images")`).
pub fn trigger_diagnostic(
    model: &PreActResNet18,
    clean: &LabeledImages,
    report: &ScanReport,
    attack: &Attack,
    n: usize,
    seed: u64,
) -> Result<TriggerDiagnostic> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "--trigger-images must be at least 1".into(),
        ));
    }
    let mut idx: Vec<usize> = (0..clean.len()).collect();
    Rng::derive(seed, "trigger-images").shuffle(&mut idx);
    idx.truncate(n);
    let imgs = clean.subset(&idx);
    let batch = eval_batch(model.backend().as_ref()).min(64);
    let sens = trigger_sensitivity(model, &imgs, attack, batch)?;
    trigger_overlap(&report.convs, &sens, attack, imgs.len())
}

pub fn print_summary(r: &ScanReport) {
    let st = &r.settings;
    println!(
        "FRG scan: {} feature maps in {} convs, {} samples x {} repeats, {} score, {} step(s), eps {:.5}, {:.1} s on {}; selected {} (p = {})",
        r.totals.feature_maps, r.totals.convs, st.params.samples, st.repeats, st.score, st.steps, st.params.eps, r.seconds, st.device, r.totals.selected, st.params.p
    );
    let rep = r.stability.is_some();
    println!(
        "  {:<22} {:>5} {:>9} {:>9}{}  selected ({} score)",
        "conv",
        "C",
        "mean acc",
        "min acc",
        if rep {
            "    spread  common     tau"
        } else {
            ""
        },
        st.score
    );
    for c in &r.convs {
        let mean = c.scores.iter().sum::<f32>() / c.channels.max(1) as f32;
        let min = c.scores.iter().cloned().fold(f32::INFINITY, f32::min);
        let extra = match &c.stability {
            Some(s) => format!(
                " {:>9.3} {:>6.0}% {:>7.2}",
                s.score_std.iter().sum::<f32>() / s.score_std.len().max(1) as f32,
                100.0 * s.common_share,
                s.kendall_tau
            ),
            None if rep => " ".repeat(25),
            None => String::new(),
        };
        let sel: Vec<String> = c
            .selected
            .iter()
            .take(6)
            .map(|&i| {
                let v = match st.score.as_str() {
                    "prob" => c.true_prob.get(i),
                    "margin" => c.margin.get(i),
                    _ => c.scores.get(i),
                };
                format!("{i} ({:.2})", v.copied().unwrap_or(f32::NAN))
            })
            .collect();
        let more = if c.selected.len() > 6 {
            format!(" +{}", c.selected.len() - 6)
        } else {
            String::new()
        };
        println!(
            "  {:<22} {:>5} {:>9.3} {:>9.3}{}  {}{}",
            c.name,
            c.channels,
            mean,
            min,
            extra,
            sel.join(", "),
            more
        );
    }
    if let Some(s) = &r.stability {
        println!("{}", s.line());
    }
    if let Some(t) = &r.trigger {
        println!("{}", t.line());
    }
}

#[cfg(test)]
mod recipe_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: ScanArgs,
    }

    fn parse(args: &[&str]) -> ScanArgs {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .s
    }

    #[test]
    fn recipes_set_defaults_and_flags_override_them() {
        let paper = parse(&["--recipe", "paper"]);
        assert_eq!(
            (paper.samples(), paper.repeats(), paper.score()),
            (32, 1, ScoreKind::Acc)
        );
        let m = parse(&["--recipe", "margin4"]);
        assert_eq!(
            (m.samples(), m.repeats(), m.score()),
            (32, 4, ScoreKind::Margin)
        );
        let o = parse(&[
            "--recipe",
            "margin4",
            "--repeats",
            "2",
            "--score",
            "prob",
            "--samples",
            "64",
        ]);
        assert_eq!(
            (o.samples(), o.repeats(), o.score()),
            (64, 2, ScoreKind::Prob)
        );
        let d = parse(&[]);
        assert_eq!((d.recipe, d.recipe()), (None, Recipe::Paper));
        assert_eq!(d.with_default_recipe(Recipe::Margin4).repeats(), 4);
        let given = parse(&["--recipe", "paper"]).with_default_recipe(Recipe::Margin4);
        assert_eq!(given.repeats(), 1);
        assert!(T::try_parse_from(["t", "--recipe", "best"]).is_err());
    }
}
