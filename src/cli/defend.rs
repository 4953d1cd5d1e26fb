//! `fmp-engine defend WEIGHTS --data DIR --out OUT`: scan, prune and fine-tune in one run.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::data::{DatasetKind, Split};
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::metrics::{evaluate, Metrics};
use fmp_engine::fmp::pipeline::{eval_batch, find_data, load_clean, load_model, load_split};
use fmp_engine::fmp::prune::{apply, selections};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::check::{int_in, MAX_CLASS, MAX_IMAGES};
use super::common::DeviceArgs;
use super::finetune::{run_finetune, FinetuneArgs};
use super::scan::{print_summary, run_scan, ScanArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors).
    pub weights: PathBuf,
    /// Dataset folder [default: $FMP_DATA, ../shared/data, the engine's cache].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Defended weights.
    #[arg(long)]
    pub out: PathBuf,
    /// Scan report [default: `<OUT>.scan.json`].
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Keep pruned filters at zero during fine-tuning (the reference does not).
    #[arg(long)]
    pub mask: bool,
    /// Also report Acc/ASR/RA before and after under this attack (badnets, blended, lowfreq, wanet).
    #[arg(long)]
    pub attack: Option<AttackKind>,
    #[arg(long, default_value_t = 0, value_parser = int_in::<u32>(0, MAX_CLASS))]
    pub target: u32,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub eval_limit: Option<usize>,
    #[command(flatten)]
    pub scan: ScanArgs,
    #[command(flatten)]
    pub ft: FinetuneArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    super::check::output_path(&a.out, "--out")?;
    let report_path = a.report.clone().unwrap_or_else(|| {
        let mut s = a.out.as_os_str().to_owned();
        s.push(".scan.json");
        PathBuf::from(s)
    });
    super::check::output_path(&report_path, "--report")?;
    let _lock = super::check::lock_output(&a.out, "--out")?;
    let backend = a.device.backend()?;
    let dir = find_data(a.data.as_deref())?;
    let (clean, kind) = load_clean(&dir)?;
    let mut model = load_model(backend.clone(), &a.weights, kind)?;
    if a.attack.is_some() && a.target as usize >= model.config().num_classes {
        return Err(fmp_engine::Error::InvalidArgument(format!(
            "--target {} out of range 0..{} (the model's classes)",
            a.target,
            model.config().num_classes
        )));
    }
    // The fine-tuning subset must be usable before the scan spends its time.
    fmp_engine::fmp::finetune::subset(&clean, a.ft.ratio, a.ft.ft_seed)?;
    let attack = a.attack.map(|k| Attack::new(k, a.target));
    let test = match a.attack {
        Some(_) => Some(
            load_split(&dir, Split::Test)?
                .0
                .truncate(a.eval_limit.unwrap_or(usize::MAX)),
        ),
        None => None,
    };
    let before = match (&test, &attack) {
        (Some(t), Some(at)) => Some(evaluate(&model, t, Some(at), eval_batch(backend.as_ref()))?),
        _ => None,
    };
    let t0 = Instant::now();
    defend(
        &mut model,
        &clean,
        kind,
        &dir,
        &a.weights,
        &a.scan,
        &a.ft,
        a.mask,
        &report_path,
        &backend,
    )?;
    model.save(&a.out)?;
    println!(
        "defended weights: {} ({:.1} s)",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if let (Some(t), Some(at), Some(b)) = (&test, &attack, before) {
        let after = evaluate(&model, t, Some(at), eval_batch(backend.as_ref()))?;
        print_metrics_table(&[("before", b), ("after FMP", after)]);
    }
    Ok(())
}

/// Scan (report written to `report_path`), prune, optionally mask, fine-tune; `model` is changed in place.
#[allow(clippy::too_many_arguments)]
pub fn defend(
    model: &mut PreActResNet18,
    clean: &LabeledImages,
    kind: DatasetKind,
    data_dir: &std::path::Path,
    weights: &std::path::Path,
    scan: &ScanArgs,
    ft: &FinetuneArgs,
    mask: bool,
    report_path: &std::path::Path,
    backend: &Arc<dyn Backend>,
) -> Result<()> {
    let report = run_scan(model, weights, clean, data_dir, scan, backend)?;
    report.save(report_path)?;
    print_summary(&report);
    println!("report: {}", report_path.display());
    let pruned = selections(model, &report, report_path)?;
    apply(model, &pruned)?;
    if mask {
        model.set_masks(&pruned)?;
    }
    println!(
        "pruned {} feature maps{}",
        pruned.len(),
        if mask {
            " (masked during fine-tuning)"
        } else {
            ""
        }
    );
    run_finetune(model, clean, ft, kind)
}

pub fn print_metrics_table(rows: &[(&str, Metrics)]) {
    println!("  {:<12} {:>8} {:>8} {:>8}", "", "Acc %", "ASR %", "RA %");
    for (name, m) in rows {
        let pct = |v: Option<f64>| {
            v.map(|v| format!("{:.2}", 100.0 * v))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "  {:<12} {:>8.2} {:>8} {:>8}",
            name,
            100.0 * m.acc,
            pct(m.asr),
            pct(m.ra)
        );
    }
}
