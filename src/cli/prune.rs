//! `fmp-engine prune WEIGHTS --report report.json --out pruned.safetensors [--mask]`.
use std::path::PathBuf;

use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::prune::{apply, selections, PruneMask};
use fmp_engine::fmp::select::ScanReport;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::common::{DeviceArgs, JsonOut};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors).
    pub weights: PathBuf,
    /// Scan report from `fmp-engine scan`.
    #[arg(long)]
    pub report: PathBuf,
    /// Pruned weights.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `<out>.mask.json`, so `finetune` keeps the pruned filters at zero.
    #[arg(long)]
    pub mask: bool,
    /// Print one JSON object on stdout (progress text goes to stderr); fields in docs/report.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let json = JsonOut::begin(a.json)?;
    let report = ScanReport::load(&a.report)?;
    // Normalisation constants do not matter for pruning; the file's own shapes give width and classes.
    let (mut model, _) =
        PreActResNet18::load(a.device.backend()?, &a.weights, DatasetKind::Cifar10)?;
    let pruned = selections(&model, &report, &a.report)?;
    apply(&mut model, &pruned)?;
    model.save(&a.out)?;
    println!(
        "pruned {} feature maps in {} convs -> {}",
        pruned.len(),
        report
            .convs
            .iter()
            .filter(|c| !c.selected.is_empty())
            .count(),
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
        "report": a.report.display().to_string(),
        "out": a.out.display().to_string(),
        "pruned": pruned.len(),
        "convs": report.convs.iter().filter(|c| !c.selected.is_empty()).count(),
        "mask": mask,
    }))
}
