//! `fmp-engine prune WEIGHTS --report report.json --out pruned.safetensors [--mask]`.
use std::path::PathBuf;

use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::baselines::counts_of;
use fmp_engine::fmp::controls::{counts_for_p, random_selection};
use fmp_engine::fmp::prune::{apply, selections, PruneMask};
use fmp_engine::fmp::select::ScanReport;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::check::{int_in, seed, MAX_CHANNELS};
use super::common::{JsonDeviceArgs, JsonOut};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors).
    pub weights: PathBuf,
    /// Scan report from `fmp-engine scan` (with --random: only its per-conv counts are used).
    #[arg(long, required_unless_present = "random")]
    pub report: Option<PathBuf>,
    /// Control: prune random maps instead, seeded, with the same count per conv as the report (or, without
    /// --report, floor(C/p) per conv as FMP).
    #[arg(long, value_parser = seed)]
    pub random: Option<u64>,
    /// With --random and no --report: p of floor(C/p) [default: min(64, base width)].
    #[arg(long, value_parser = int_in::<usize>(1, MAX_CHANNELS))]
    pub p: Option<usize>,
    /// Pruned weights.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `<out>.mask.json`, so `finetune` keeps the pruned filters at zero.
    #[arg(long)]
    pub mask: bool,
    #[command(flatten)]
    pub common: JsonDeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    if let Some(report) = &a.report {
        super::check::input_file(report, "--report")?;
    }
    let _lock = super::check::claim_out(&a.out)?;
    if a.mask {
        super::check::output_path(&PruneMask::sidecar(&a.out), "--mask")?;
    }
    let json = JsonOut::begin(a.common.json)?;
    let report = match &a.report {
        Some(path) => Some(ScanReport::load(path)?),
        None => None,
    };
    // Normalisation constants do not matter for pruning; the file's own shapes give width and classes.
    let (mut model, _) =
        PreActResNet18::load(a.common.device.backend()?, &a.weights, DatasetKind::Cifar10)?;
    let from_report = match (&report, &a.report) {
        (Some(r), Some(path)) => Some(selections(&model, r, path)?),
        _ => None,
    };
    let pruned = match (a.random, from_report) {
        (Some(seed), r) => {
            let counts = match r {
                Some(sel) => counts_of(&model, &sel),
                None => counts_for_p(&model, a.p.unwrap_or(model.config().width.min(64)))?,
            };
            random_selection(&model, &counts, seed)?
        }
        (None, Some(sel)) => sel,
        (None, None) => unreachable!("clap requires --report without --random"),
    };
    apply(&mut model, &pruned)?;
    model.save(&a.out)?;
    let convs = counts_of(&model, &pruned)
        .iter()
        .filter(|&&c| c > 0)
        .count();
    println!(
        "pruned {} {}feature maps in {convs} convs -> {}",
        pruned.len(),
        if a.random.is_some() { "random " } else { "" },
        a.out.display()
    );
    let mut mask = None;
    if a.mask {
        let path = PruneMask::sidecar(&a.out);
        PruneMask::from_pairs(&model, &pruned).save(&path)?;
        println!("mask: {}", path.display());
        mask = Some(path.display().to_string());
    }
    json.emit(&serde_json::json!({
        "weights": a.weights.display().to_string(),
        "report": a.report.as_ref().map(|p| p.display().to_string()),
        "random": a.random,
        "out": a.out.display().to_string(),
        "pruned": pruned.len(),
        "convs": convs,
        "mask": mask,
    }))
}
