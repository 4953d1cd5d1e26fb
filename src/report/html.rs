//! `report.html` of `defend --report DIR`: one self-contained page (inline CSS and SVG, no scripts, nothing
//! fetched) that is also well-formed XML, so a test can parse it. Sections: the metrics (table and bar chart),
//! the scan plot with a per-conv table, the settings, and the command lines that reproduce the run.
use std::fmt::Write;

use super::plot::metrics_chart_svg;
use super::DefendSummary;
use crate::error::Result;
use crate::fmp::select::ScanReport;

/// Text or attribute value with `& < > " '` escaped.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 2em auto; max-width: 1160px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
p.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { color: #555; font-size: 0.92em; margin-top: 0.3em; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.7em; overflow-x: auto; white-space: pre-wrap; }
.settings { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
details summary { cursor: pointer; color: #245; }
";

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", 100.0 * v))
        .unwrap_or_else(|| "-".into())
}

/// `(key, value)` rows of a JSON object (values as compact JSON, strings unquoted).
fn object_rows(v: &serde_json::Value) -> Vec<(String, String)> {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    // f32 settings serialised through f64 (0.003921568859368563): the way they are
                    // written on the command line, and a short decimal
                    serde_json::Value::Number(x) if x.is_f64() => {
                        let f = x.as_f64().unwrap_or(f64::NAN);
                        let frac = super::fraction_arg(f as f32);
                        let short = format!("{}", f as f32);
                        if frac != short {
                            format!("{frac} ({:.6})", f)
                        } else {
                            short
                        }
                    }
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn kv_table(out: &mut String, caption: &str, rows: &[(String, String)]) {
    let _ = write!(out, "<table><caption>{}</caption>", escape(caption));
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    out.push_str("</table>\n");
}

/// The page. `scan_svg` is the scan plot (`plot::scan_plot_svg(scan)`), inlined as is.
pub fn defend_report_html(s: &DefendSummary, scan: &ScanReport, scan_svg: &str) -> Result<String> {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(
        o,
        "<title>FMP defense report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        escape(&s.weights)
    );
    let _ = writeln!(
        o,
        "<h1>FMP defense report</h1>\n<p class=\"sub\">{} &#8594; {} &#183; {} ({}) &#183; {} &#183; fmp-engine {}</p>",
        escape(&s.weights),
        escape(&s.out),
        escape(&s.dataset),
        escape(&s.data),
        escape(&s.device),
        env!("CARGO_PKG_VERSION")
    );

    // metrics
    o.push_str("<section id=\"metrics\">\n<h2>Acc / ASR / RA</h2>\n");
    if s.stages.is_empty() {
        o.push_str("<p>Nothing was evaluated.</p>\n");
    } else {
        let n = s.stages[0].metrics.n;
        let what = match (&s.attack, s.target) {
            (Some(a), Some(t)) => format!(
                "{n} clean test images; ASR and RA on the {} of them not of the target class {t}, with the {a} trigger.",
                s.stages[0].metrics.n_poisoned
            ),
            _ => format!("{n} clean test images; no attack given (--attack), so no ASR / RA."),
        };
        let _ = writeln!(
            o,
            "<p>Acc: clean top-1 accuracy. ASR: poisoned images classified as the target. RA: poisoned images \
             classified as their true class. {}</p>",
            escape(&what)
        );
        o.push_str("<table id=\"metrics-table\"><tr><th>stage</th><th class=\"num\">Acc %</th><th class=\"num\">ASR %</th><th class=\"num\">RA %</th></tr>\n");
        for st in &s.stages {
            let m = &st.metrics;
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td class=\"num\">{:.2}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&st.stage),
                100.0 * m.acc,
                pct(m.asr),
                pct(m.ra)
            );
        }
        o.push_str("</table>\n");
        let rows: Vec<(String, _)> = s
            .stages
            .iter()
            .map(|st| (st.stage.clone(), st.metrics))
            .collect();
        let chart = metrics_chart_svg(&rows)?;
        let _ = writeln!(
            o,
            "<figure id=\"fig-metrics\">\n{chart}\n<figcaption>Acc, ASR and RA before the defense, after pruning \
             {} feature maps, and after fine-tuning.</figcaption>\n</figure>",
            s.pruned
        );
    }
    o.push_str("</section>\n");

    // scan
    let _ = writeln!(
        o,
        "<section id=\"scan\">\n<h2>FRG scan</h2>\n<p>Each row is one conv, in execution order; each dot one of its \
         feature maps, placed at its FRG score: the model's accuracy on {} clean images after a perturbation aimed at \
         that feature map. Backdoor feature maps break the model most, so they score lowest; in each conv the \
         floor(C/p) lowest (p = {}) are selected (red) and pruned. {} of {} feature maps selected; the scan took \
         {:.1} s on {}.</p>",
        scan.settings.params.samples,
        scan.settings.params.p,
        scan.totals.selected,
        scan.totals.feature_maps,
        scan.seconds,
        escape(&scan.settings.device)
    );
    let _ = writeln!(
        o,
        "<figure id=\"fig-scan\">\n{scan_svg}\n<figcaption>FRG score per feature map, per conv (selected / channels \
         beside each name). Also in scan.svg; the numbers are in {}.</figcaption>\n</figure>",
        escape(&s.scan_report)
    );
    o.push_str("<details><summary>per-conv table</summary>\n<table id=\"conv-table\"><tr><th>#</th><th>conv</th><th class=\"num\">C</th><th class=\"num\">min</th><th class=\"num\">median</th><th class=\"num\">max</th><th>selected channels (score)</th></tr>\n");
    for c in &scan.convs {
        let mut v: Vec<f32> = c.scores.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", v[((v.len() - 1) as f64 * q).round() as usize])
            }
        };
        let sel: Vec<String> = c
            .selected
            .iter()
            .map(|&i| format!("{i} ({:.3})", c.scores[i]))
            .collect();
        let _ = writeln!(
            o,
            "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            c.index,
            escape(&c.name),
            c.channels,
            at(0.0),
            at(0.5),
            at(1.0),
            escape(&sel.join(", "))
        );
    }
    o.push_str("</table>\n</details>\n</section>\n");

    // settings
    o.push_str("<section id=\"settings\">\n<h2>Settings</h2>\n<div class=\"settings\">\n");
    let scan_rows = object_rows(&serde_json::to_value(&scan.settings).unwrap_or_default());
    kv_table(&mut o, "scan", &scan_rows);
    kv_table(&mut o, "fine-tuning", &object_rows(&s.finetune));
    let run_rows = vec![
        ("weights".to_string(), s.weights.clone()),
        (
            "model".to_string(),
            format!(
                "PreActResNet18, width {}, {} classes",
                scan.model.width, scan.model.num_classes
            ),
        ),
        ("defended weights".to_string(), s.out.clone()),
        ("scan report".to_string(), s.scan_report.clone()),
        (
            "attack".to_string(),
            match (&s.attack, s.target) {
                (Some(a), Some(t)) => format!("{a}, target {t}"),
                _ => "none given".to_string(),
            },
        ),
        ("mask during fine-tuning".to_string(), s.mask.to_string()),
        ("feature maps pruned".to_string(), s.pruned.to_string()),
        (
            "defense time".to_string(),
            format!("{:.1} s (scan {:.1} s)", s.defend_seconds, s.scan_seconds),
        ),
    ];
    kv_table(&mut o, "run", &run_rows);
    o.push_str("</div>\n</section>\n");

    // reproduce
    let _ = writeln!(
        o,
        "<section id=\"reproduce\">\n<h2>Reproduce</h2>\n<p>The command that made this report:</p>\n<pre id=\"command\">{}</pre>\n\
         <p>The same defense one step at a time (scan, prune, fine-tune, then Acc / ASR / RA of each stage):</p>\n<pre id=\"steps\">{}</pre>\n</section>",
        escape(&s.command),
        escape(&s.reproduce.join("\n"))
    );
    o.push_str("</body>\n</html>\n");
    Ok(o)
}
