//! `fmp-engine defend WEIGHTS --data DIR --out OUT`: scan, prune and fine-tune in one run.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::data::{DatasetKind, Split};
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::metrics::{evaluate, Metrics};
use fmp_engine::fmp::pipeline::{eval_batch, load_split};
use fmp_engine::fmp::prune::{apply, selections};
use fmp_engine::fmp::select::ScanReport;
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::report::write_defend_report;
use fmp_engine::Result;

use super::check::{int_in, real_in, MAX_CLASS, MAX_IMAGES};
use super::common::{DataArgs, DeviceArgs, JsonOut, Loaded};
use super::finetune::{run_finetune, FinetuneArgs};
use super::methods::{run_method, Ctx, Method};
use super::scan::{print_summary, run_scan, ScanArgs, DEFEND_RECIPE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors).
    pub weights: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Defended weights.
    #[arg(long)]
    pub out: PathBuf,
    /// Scan report [default: `<OUT>.scan.json`].
    #[arg(long)]
    pub scan_report: Option<PathBuf>,
    /// Write a report folder: report.html (Acc/ASR/RA before, after pruning and after fine-tuning, the
    /// scan plot, the settings, the commands to reproduce it), scan.svg and summary.json.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print one JSON object (the summary: metrics at each stage, settings, commands) on stdout; the
    /// progress text goes to stderr.
    #[arg(long)]
    pub json: bool,
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
    /// The defense: fmp, random (random maps, FMP's counts per conv, seed --seed), finetune-only,
    /// fine-pruning (least active maps on clean data, FMP's counts), clp (data-free, no fine-tuning) or
    /// oracle (control, needs --attack: the maps most sensitive to the trigger, FMP's counts).
    #[arg(long, default_value = "fmp")]
    pub method: Method,
    /// Also run the controls (fine-tuning only; random maps with FMP's counts, seed --seed) and print
    /// their rows beside FMP's (after pruning alone and after fine-tuning). The weights written are --method's.
    #[arg(long)]
    pub controls: bool,
    /// CLP: prune maps whose channel Lipschitz bound exceeds mean + u * std of their conv.
    #[arg(long, default_value_t = 3.0, value_parser = real_in(-100.0, false, 100.0, false))]
    pub clp_u: f32,
    /// Fine-Pruning: clean images its activity is measured on.
    #[arg(long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub fp_images: usize,
    #[command(flatten)]
    pub scan: ScanArgs,
    #[command(flatten)]
    pub ft: FinetuneArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(mut a: Args) -> Result<()> {
    a.scan = a.scan.with_default_recipe(DEFEND_RECIPE);
    super::check::input_file(&a.weights, "WEIGHTS")?;
    super::check::output_path(&a.out, "--out")?;
    let report_path = a.scan_report.clone().unwrap_or_else(|| {
        let mut s = a.out.as_os_str().to_owned();
        s.push(".scan.json");
        PathBuf::from(s)
    });
    super::check::output_path(&report_path, "--scan-report")?;
    if let Some(r) = &a.report {
        if a.controls || a.method != Method::Fmp {
            return Err(fmp_engine::Error::InvalidArgument(
                "--report describes one FMP defense: it cannot be combined with --controls or a \
                 --method other than fmp (use --json for their rows)"
                    .into(),
            ));
        }
        super::defend_report::check_report_dir(r)?;
    }
    if a.method == Method::Oracle && a.attack.is_none() {
        return Err(fmp_engine::Error::InvalidArgument(
            super::methods::ORACLE_NEEDS_ATTACK.into(),
        ));
    }
    let _lock = super::check::lock_output(&a.out, "--out")?;
    let (json, loaded) = Loaded::start(a.json, &a.device, &a.data, &a.weights)?;
    let Loaded {
        backend,
        dir,
        clean,
        kind,
        mut model,
    } = loaded;
    if a.attack.is_some() && a.target as usize >= model.config().num_classes {
        return Err(fmp_engine::Error::InvalidArgument(format!(
            "--target {} out of range 0..{} (the model's classes)",
            a.target,
            model.config().num_classes
        )));
    }
    // The fine-tuning subset must be usable before the scan spends its time.
    fmp_engine::fmp::finetune::subset(&clean, a.ft.ratio, a.ft.ft_seed)?;
    // the test split: for ASR/RA under --attack, and for the clean accuracy a report or --json shows
    let summarise = a.report.is_some() || a.json;
    let test = match a.attack.is_some() || summarise {
        true => Some(
            load_split(&dir, Split::Test)?
                .0
                .truncate(a.eval_limit.unwrap_or(usize::MAX)),
        ),
        false => None,
    };
    let attack = a.attack.map(|k| Attack::new(k, a.target));
    let eval = |m: &PreActResNet18| -> Result<Option<Metrics>> {
        match &test {
            Some(t) => Ok(Some(evaluate(
                m,
                t,
                attack.as_ref(),
                eval_batch(backend.as_ref()),
            )?)),
            None => Ok(None),
        }
    };
    let before = eval(&model)?;
    if a.controls || a.method != Method::Fmp {
        return run_methods(
            &a,
            &model,
            &clean,
            kind,
            &dir,
            &backend,
            test.as_ref(),
            attack.as_ref(),
            before,
            &report_path,
            &json,
        );
    }
    let t0 = Instant::now();
    let mut after_prune = None;
    let mut eval_seconds = 0.0;
    let (report, pruned) = defend(
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
        &mut |m| {
            if summarise {
                let t = Instant::now();
                after_prune = eval(m)?;
                eval_seconds = t.elapsed().as_secs_f64();
            }
            Ok(())
        },
    )?;
    let defend_seconds = t0.elapsed().as_secs_f64() - eval_seconds;
    model.save(&a.out)?;
    println!(
        "defended weights: {} ({:.1} s)",
        a.out.display(),
        defend_seconds
    );
    let after = eval(&model)?;
    if let (Some(_), Some(b), Some(af)) = (&attack, before, after) {
        let mut rows = vec![("before", b)];
        rows.extend(after_prune.map(|m| ("pruned", m)));
        rows.push(("after FMP", af));
        print_metrics_table(&rows);
    }
    if summarise {
        let stages = [
            ("before", before),
            ("after pruning", after_prune),
            ("after fine-tuning", after),
        ];
        let summary = super::defend_report::summary(
            &a,
            &dir,
            kind,
            &report_path,
            &report,
            pruned,
            &stages,
            defend_seconds,
            &backend.name(),
        );
        if let Some(r) = &a.report {
            let page = write_defend_report(r, &summary, &report)?;
            println!("report: {}", page.display());
        }
        json.emit(&summary)?;
    }
    Ok(())
}

/// `--method` other than fmp, or `--controls`: each defense on a copy of the model, a row per result.
#[allow(clippy::too_many_arguments)]
fn run_methods(
    a: &Args,
    model: &PreActResNet18,
    clean: &LabeledImages,
    kind: DatasetKind,
    dir: &std::path::Path,
    backend: &Arc<dyn Backend>,
    test: Option<&LabeledImages>,
    attack: Option<&Attack>,
    before: Option<Metrics>,
    report_path: &std::path::Path,
    json: &JsonOut,
) -> Result<()> {
    let ctx = Ctx {
        clean,
        kind,
        data_dir: dir,
        weights: &a.weights,
        scan: &a.scan,
        ft: &a.ft,
        mask: a.mask,
        backend,
        test: test.map(|t| (t, attack)),
        seed: a.scan.seed,
        clp_u: a.clp_u,
        fp_images: a.fp_images,
        report_path: Some(report_path),
    };
    let mut list = vec![a.method];
    if a.controls {
        for m in [Method::Fmp, Method::FinetuneOnly, Method::Random] {
            if !list.contains(&m) {
                list.push(m);
            }
        }
    }
    let mut rows: Vec<(String, Metrics)> = before
        .map(|b| ("before".to_string(), b))
        .into_iter()
        .collect();
    let mut times = Vec::new();
    let mut seconds = Vec::new();
    for (i, &m) in list.iter().enumerate() {
        let (defended, out) = run_method(model, m, &ctx)?;
        if i == 0 {
            defended.save(&a.out)?;
            println!("defended weights ({}): {}", m.name(), a.out.display());
        }
        if let Some(p) = out.after_prune.filter(|_| m.fine_tunes()) {
            rows.push((format!("{} pruned", m.name()), p));
        }
        if let Some(x) = out.after {
            rows.push((m.name().to_string(), x));
        }
        times.push(format!("{} {:.1} s", m.name(), out.seconds));
        seconds.push((m.name(), out.seconds));
    }
    if !rows.is_empty() {
        let r: Vec<(&str, Metrics)> = rows.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        print_metrics_table(&r);
    }
    println!("time: {}", times.join(", "));
    json.emit(&serde_json::json!({
        "schema": 1,
        "weights": a.weights,
        "out": a.out,
        "method": a.method.name(),
        "seed": a.scan.seed,
        "rows": rows
            .iter()
            .map(|(name, m)| serde_json::json!({ "name": name, "metrics": m }))
            .collect::<Vec<_>>(),
        "seconds": seconds
            .iter()
            .map(|(name, s)| serde_json::json!({ "method": name, "seconds": s }))
            .collect::<Vec<_>>(),
    }))
}

/// Scan (report written to `report_path`), prune, optionally mask, `after_prune(model)`, fine-tune; `model`
/// is changed in place. Returns the scan report and the number of feature maps pruned.
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
    after_prune: &mut dyn FnMut(&PreActResNet18) -> Result<()>,
) -> Result<(ScanReport, usize)> {
    let report = run_scan(model, weights, clean, data_dir, scan, backend, None)?.report();
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
    after_prune(model)?;
    run_finetune(model, clean, ft, kind, None)?;
    Ok((report, pruned.len()))
}

pub fn print_metrics_table(rows: &[(&str, Metrics)]) {
    println!("  {:<20} {:>8} {:>8} {:>8}", "", "Acc %", "ASR %", "RA %");
    for (name, m) in rows {
        let pct = |v: Option<f64>| {
            v.map(|v| format!("{:.2}", 100.0 * v))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "  {:<20} {:>8.2} {:>8} {:>8}",
            name,
            100.0 * m.acc,
            pct(m.asr),
            pct(m.ra)
        );
    }
}
