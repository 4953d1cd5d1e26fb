//! `fmp-engine prune WEIGHTS --report report.json --out pruned.safetensors [--mask]`.
use std::path::PathBuf;

use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::prune::{apply, selections, PruneMask};
use fmp_engine::fmp::select::ScanReport;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::common::DeviceArgs;

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
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    super::check::input_file(&a.report, "--report")?;
    super::check::output_path(&a.out, "--out")?;
    let _lock = super::check::lock_output(&a.out, "--out")?;
    if a.mask {
        super::check::output_path(&PruneMask::sidecar(&a.out), "--mask")?;
    }
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
    if a.mask {
        let path = PruneMask::sidecar(&a.out);
        PruneMask::from_pairs(&model, &pruned).save(&path)?;
        println!("mask: {}", path.display());
    }
    Ok(())
}
