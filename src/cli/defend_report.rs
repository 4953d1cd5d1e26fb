//! What `defend --report DIR` and `defend --json` say about a run: the summary (metrics at each stage,
//! settings) and the command lines that reproduce it, the whole run and step by step.
use std::path::Path;

use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::metrics::Metrics;
use fmp_engine::fmp::prune::PruneMask;
use fmp_engine::fmp::select::ScanReport;
use fmp_engine::report::{fraction_arg, shell_line, DefendSummary, Stage, DEFEND_SCHEMA};
use fmp_engine::{Error, Result};

use super::defend::Args;

/// `--report DIR` must be a folder (or not exist yet). A `.json` name is the old meaning of `--report`.
pub fn check_report_dir(dir: &Path) -> Result<()> {
    if dir
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return Err(Error::InvalidArgument(format!(
            "--report {}: --report names a folder for report.html; the scan report's path is --scan-report",
            dir.display()
        )));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(Error::File {
            path: dir.into(),
            msg: "--report names a folder for report.html, but this is a file".into(),
        });
    }
    Ok(())
}

/// This process's command line, shell-quoted, with the program as `fmp-engine`.
pub fn command_line() -> String {
    let mut words: Vec<String> = std::env::args().skip(1).collect();
    words.insert(0, "fmp-engine".into());
    shell_line(&words)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `<out without .safetensors>-pruned.safetensors`: where the step-by-step commands put the pruned model.
fn pruned_path(out: &Path) -> String {
    let s = path(out);
    let stem = s.strip_suffix(".safetensors").unwrap_or(&s);
    format!("{stem}-pruned.safetensors")
}

/// `scan`, `prune`, `finetune` and one `eval` per stage that together do what this `defend` run did.
pub fn reproduce_steps(a: &Args, data: &Path, scan_report: &Path, width: usize) -> Vec<String> {
    let s = &a.scan;
    let ft = &a.ft;
    let (w, d, r, out) = (
        path(&a.weights),
        path(data),
        path(scan_report),
        path(&a.out),
    );
    let pruned = pruned_path(&a.out);
    let device = a.device.device.clone();
    let mut scan: Vec<String> = vec!["fmp-engine".into(), "scan".into(), w.clone()];
    let p = s.p.unwrap_or(width.min(64));
    for (k, v) in [
        ("--data", d.clone()),
        ("--samples", s.samples().to_string()),
        ("--score", s.score().name().to_string()),
        ("--repeats", s.repeats().to_string()),
        ("--aggregate", s.aggregate.name().to_string()),
        ("--steps", s.steps.to_string()),
        ("--p", p.to_string()),
        ("--alpha", fraction_arg(s.alpha)),
        ("--eps", fraction_arg(s.eps)),
        ("--seed", s.seed.to_string()),
    ] {
        scan.extend([k.to_string(), v]);
    }
    if s.reference_order {
        scan.push("--reference-order".into());
    }
    if let Some(c) = s.chunk {
        scan.extend(["--chunk".into(), c.to_string()]);
    }
    if s.naive {
        scan.push("--naive".into());
    }
    scan.extend(["--out".into(), r.clone(), "--device".into(), device.clone()]);
    let mut prune: Vec<String> = ["fmp-engine", "prune", &w, "--report", &r, "--out", &pruned]
        .iter()
        .map(|x| x.to_string())
        .collect();
    if a.mask {
        prune.push("--mask".into());
    }
    prune.extend(["--device".into(), device.clone()]);
    let mut finetune: Vec<String> = vec!["fmp-engine".into(), "finetune".into(), pruned.clone()];
    for (k, v) in [
        ("--data", d.clone()),
        ("--epochs", ft.epochs.to_string()),
        ("--ratio", ft.ratio.to_string()),
        ("--lr", ft.lr.to_string()),
        ("--batch", ft.batch.to_string()),
        ("--momentum", ft.momentum.to_string()),
        ("--weight-decay", ft.weight_decay.to_string()),
        ("--eta-min", ft.eta_min.to_string()),
        ("--ft-seed", ft.ft_seed.to_string()),
        ("--out", out.clone()),
    ] {
        finetune.extend([k.to_string(), v]);
    }
    // the mask prune wrote; without --mask, none (not even a stale <pruned>.mask.json)
    if a.mask {
        let mask = PruneMask::sidecar(Path::new(&pruned));
        finetune.extend(["--mask".into(), path(&mask)]);
    } else {
        finetune.push("--no-mask".into());
    }
    finetune.extend(["--device".into(), device.clone()]);
    let mut lines = vec![shell_line(&scan), shell_line(&prune), shell_line(&finetune)];
    for m in [&w, &pruned, &out] {
        let mut e: Vec<String> = ["fmp-engine", "eval", m, "--data", &d]
            .iter()
            .map(|x| x.to_string())
            .collect();
        if let Some(k) = a.attack {
            e.extend([
                "--attack".into(),
                k.name().into(),
                "--target".into(),
                a.target.to_string(),
            ]);
        }
        if let Some(n) = a.eval_limit {
            e.extend(["--limit".into(), n.to_string()]);
        }
        e.extend(["--json".into(), "--device".into(), device.clone()]);
        lines.push(shell_line(&e));
    }
    lines
}

/// The settings' f32 values as they print (0.01), not as their f64 widening (0.009999999776482582).
fn f32_as_written(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let short = (n.as_f64().unwrap_or(f64::NAN) as f32).to_string();
            short
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::Number(n))
        }
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, f32_as_written(v))).collect())
        }
        other => other,
    }
}

/// The summary of a finished run.
#[allow(clippy::too_many_arguments)]
pub fn summary(
    a: &Args,
    data: &Path,
    kind: DatasetKind,
    scan_report: &Path,
    report: &ScanReport,
    pruned: usize,
    stages: &[(&str, Option<Metrics>)],
    defend_seconds: f64,
    device: &str,
) -> DefendSummary {
    DefendSummary {
        schema: DEFEND_SCHEMA,
        weights: path(&a.weights),
        out: path(&a.out),
        scan_report: path(scan_report),
        data: path(data),
        dataset: kind.name().into(),
        device: device.into(),
        attack: a.attack.map(|k| k.name().to_string()),
        target: a.attack.map(|_| a.target),
        mask: a.mask,
        pruned,
        stages: stages
            .iter()
            .filter_map(|(s, m)| {
                m.map(|metrics| Stage {
                    stage: s.to_string(),
                    metrics,
                })
            })
            .collect(),
        finetune: f32_as_written(serde_json::to_value(&a.ft).unwrap_or_default()),
        scan_seconds: report.seconds,
        defend_seconds,
        command: command_line(),
        reproduce: reproduce_steps(a, data, scan_report, report.model.width),
    }
}
