//! `fmp-engine scan WEIGHTS`: FRG over every conv feature map, per-layer selection, JSON report.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::controls::{trigger_overlap, trigger_sensitivity, TriggerDiagnostic};
use fmp_engine::fmp::frg::ScanOptions;
use fmp_engine::fmp::pipeline::{eval_batch, find_data, load_clean, load_model, progress_bar};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::select::{
    parse_fraction, ReportModel, ReportSettings, ReportTotals, ScanReport, SCAN_SCHEMA,
};
use fmp_engine::fmp::stability::{scan_repeated, Aggregate, RepeatOptions, ScoreKind};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::{Error, Result};

use super::common::{DeviceArgs, JsonOut};

/// Scan settings shared by `scan`, `defend` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScanArgs {
    /// Clean images scoring every feature map (the reference uses one batch of 32).
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Prune floor(C/p) channels per conv [default: min(64, base width): 64 for the paper's width-64
    /// model; for narrower models the base width, so each conv loses as many channels as in the paper
    /// (1, 2, 4, 8 per conv of layers 1-4: 75 in all)].
    #[arg(long)]
    pub p: Option<usize>,
    /// Initial random step alpha (`1/255` or `0.0039`).
    #[arg(long, default_value = "1/255", value_parser = parse_fraction)]
    pub alpha: f32,
    /// Adversarial step eps (`4/255` or `0.0157`).
    #[arg(long, default_value = "4/255", value_parser = parse_fraction)]
    pub eps: f32,
    /// Seed of X0's random signs and of the choice of scan images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Apply rankings in registration order as the reference code does (its defect 4).
    #[arg(long)]
    pub reference_order: bool,
    /// Channels per batched chunk [default: sized from the backend's memory].
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Use the plain one-channel-at-a-time loop (slow; for checking).
    #[arg(long)]
    pub naive: bool,
    /// Independent draws of scan images and X0 noise (seeds derived from --seed); the report gives each
    /// map's aggregate score and spread and the agreement between repeats, and selects from the aggregate.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Selection score: acc (accuracy, ties by true-class probability: the paper), prob (mean true-class
    /// probability, ties by accuracy) or margin (mean logit margin, ties by accuracy).
    #[arg(long, default_value = "acc")]
    pub score: ScoreKind,
    /// How repeats are combined per map: mean or median.
    #[arg(long, default_value = "mean")]
    pub aggregate: Aggregate,
    /// FRG sign steps per feature map (1: the paper's single step).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
}

impl ScanArgs {
    /// The paper's recipe (32 samples, accuracy score, one draw, one step) with the given seed and p.
    pub fn paper(seed: u64, p: Option<usize>) -> Self {
        ScanArgs {
            samples: 32,
            p,
            alpha: 1.0 / 255.0,
            eps: 4.0 / 255.0,
            seed,
            reference_order: false,
            chunk: None,
            naive: false,
            repeats: 1,
            score: ScoreKind::Acc,
            aggregate: Aggregate::Mean,
            steps: 1,
        }
    }
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
    /// Known attack (badnets, blended, lowfreq, wanet): also report how many selected maps are among the
    /// maps most sensitive to its trigger, against chance.
    #[arg(long)]
    pub attack: Option<AttackKind>,
    /// Clean images the trigger diagnostic measures on.
    #[arg(long, default_value_t = 256)]
    pub trigger_images: usize,
    /// Report file.
    #[arg(long, default_value = "report.json")]
    pub out: PathBuf,
    /// Also draw the scores as an SVG: a row per conv (execution order), every feature map's score, the
    /// selected ones marked.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object on stdout (progress text goes to stderr); fields in docs/report.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let json = JsonOut::begin(a.json)?;
    let backend = a.device.backend()?;
    let dir = find_data(a.data.as_deref())?;
    let (clean, kind) = load_clean(&dir)?;
    let model = load_model(backend.clone(), &a.weights, kind)?;
    let mut report = run_scan(&model, &a.weights, &clean, &dir, &a.scan, &backend)?;
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
    print_summary(&report);
    println!("report: {}", a.out.display());
    if let Some(p) = &a.plot {
        fmp_engine::report::plot::write_scan_plot(&report, p)?;
        println!("plot: {}", p.display());
    }
    json.emit(&serde_json::json!({
        "schema": report.schema,
        "report": a.out.display().to_string(),
        "plot": a.plot.as_ref().map(|p| p.display().to_string()),
        "model": report.model,
        "settings": report.settings,
        "totals": report.totals,
        "seconds": report.seconds,
        "selected": report
            .convs
            .iter()
            .map(|c| (c.name.clone(), serde_json::json!(c.selected)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
    }))
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
        samples: s.samples,
        repeats: s.repeats,
        score: s.score,
        aggregate: s.aggregate,
    };
    let total: usize = model.convs().iter().map(|c| c.params.c_out as usize).sum();
    let pb = progress_bar((total * s.repeats) as u64, "FRG scan");
    let t0 = Instant::now();
    let (convs, stability, chunk) =
        scan_repeated(model, clean, &opts, &ro, &mut |k| pb.inc(k as u64))?;
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
            samples: s.samples,
            p,
            alpha: s.alpha,
            eps: s.eps,
            seed: s.seed,
            reference_order: s.reference_order,
            data: data_dir.display().to_string(),
            device: backend.name(),
            chunk_channels: if s.naive { 0 } else { chunk },
            score: s.score.name().into(),
            repeats: s.repeats,
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
        r.totals.feature_maps, r.totals.convs, st.samples, st.repeats, st.score, st.steps, st.eps, r.seconds, st.device, r.totals.selected, st.p
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
