//! The pictures, drawn from a synthetic scan report (no scan run): the scan plot is an SVG that parses, has
//! one row label per conv in execution order and one red dot per selected feature map; the defense report
//! page is well-formed, holds both figures, the metrics table, the settings and the reproducing commands.
mod cli_support;
use cli_support::{engine, tiny_dataset};

use fmp_engine::fmp::metrics::Metrics;
use fmp_engine::fmp::select::{
    select_lowest, ConvReport, ReportModel, ReportSettings, ReportTotals, ScanParams, ScanReport,
    SCAN_SCHEMA,
};
use fmp_engine::report::html::defend_report_html;
use fmp_engine::report::plot::{scan_plot_svg, KEPT, SELECTED};
use fmp_engine::report::{write_defend_report, DefendSummary, Stage, DEFEND_SCHEMA};

/// PreActResNet18's convs in execution order (shortcut before conv1 in the downsampling blocks), width `w`.
fn convs(w: usize) -> Vec<(String, usize)> {
    let mut v = vec![("conv1".to_string(), w)];
    for l in 1..=4 {
        let c = w << (l - 1);
        for b in 0..2 {
            if l > 1 && b == 0 {
                v.push((format!("layer{l}.0.shortcut.0"), c));
            }
            v.push((format!("layer{l}.{b}.conv1"), c));
            v.push((format!("layer{l}.{b}.conv2"), c));
        }
    }
    v
}

/// A report with made-up scores (a few low outliers per conv) and the selection the scan would make.
fn synthetic(w: usize, p: usize) -> ScanReport {
    let mut state = 0x2545f4914f6cdd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = Vec::new();
    for (index, (name, c)) in convs(w).into_iter().enumerate() {
        let scores: Vec<f32> = (0..c)
            .map(|ch| {
                if ch % 7 == 3 {
                    0.1 * next()
                } else {
                    0.6 + 0.4 * next()
                }
            })
            .collect();
        let true_prob: Vec<f32> = (0..c).map(|_| next()).collect();
        let selected = select_lowest(&scores, &true_prob, p).unwrap();
        out.push(ConvReport {
            index,
            name,
            channels: c,
            scores,
            true_prob,
            margin: Vec::new(),
            selected,
            stability: None,
        });
    }
    let totals = ReportTotals {
        convs: out.len(),
        feature_maps: out.iter().map(|c| c.channels).sum(),
        selected: out.iter().map(|c| c.selected.len()).sum(),
    };
    ScanReport {
        schema: SCAN_SCHEMA,
        model: ReportModel {
            path: "m.safetensors".into(),
            width: w,
            num_classes: 10,
        },
        settings: ReportSettings {
            params: ScanParams {
                samples: 32,
                p,
                alpha: 1.0 / 255.0,
                eps: 4.0 / 255.0,
                seed: 0,
                reference_order: false,
            },
            data: "data/cifar10".into(),
            device: "cpu".into(),
            chunk_channels: 16,
            score: "acc".into(),
            repeats: 1,
            aggregate: "mean".into(),
            steps: 1,
        },
        convs: out,
        totals,
        seconds: 12.5,
        stability: None,
        trigger: None,
    }
}

fn hex(c: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

fn texts<'a>(root: roxmltree::Node<'a, 'a>) -> Vec<String> {
    root.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

fn circles_of(root: roxmltree::Node, colour: &str) -> usize {
    root.descendants()
        .filter(|n| n.has_tag_name("circle") && n.attribute("fill") == Some(colour))
        .count()
}

#[test]
fn scan_plot_has_a_row_per_conv_and_a_red_dot_per_selected_map() {
    for (w, p) in [(8, 8), (16, 4)] {
        let r = synthetic(w, p);
        let svg = scan_plot_svg(&r).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
        let root = doc.root_element();
        assert!(root.has_tag_name("svg"));
        let t = texts(root);
        // one label per conv, in execution order from the top (smaller y first)
        let mut ys = Vec::new();
        for c in &r.convs {
            let label = format!("{}  ({}/{})", c.name, c.selected.len(), c.channels);
            let hits: Vec<_> = root
                .descendants()
                .filter(|n| {
                    n.has_tag_name("text") && n.text().map(str::trim) == Some(label.as_str())
                })
                .collect();
            assert_eq!(hits.len(), 1, "label '{label}' in {t:?}");
            ys.push(hits[0].attribute("y").unwrap().parse::<f64>().unwrap());
        }
        assert!(
            ys.windows(2).all(|w| w[0] < w[1]),
            "rows out of order: {ys:?}"
        );
        // one dot per feature map; the legend adds one of each colour
        assert_eq!(circles_of(root, &hex(SELECTED)), r.totals.selected + 1);
        assert_eq!(
            circles_of(root, &hex(KEPT)),
            r.totals.feature_maps - r.totals.selected + 1
        );
        assert!(t.iter().any(|s| s.contains("FRG score")), "axis title");
    }
}

fn metrics(acc: f64, asr: f64, ra: f64) -> Metrics {
    Metrics {
        acc,
        n: 2000,
        asr: Some(asr),
        ra: Some(ra),
        n_poisoned: 1800,
    }
}

fn summary(r: &ScanReport) -> DefendSummary {
    DefendSummary {
        schema: DEFEND_SCHEMA,
        weights: "m.safetensors".into(),
        out: "m-fmp.safetensors".into(),
        scan_report: "m-fmp.safetensors.scan.json".into(),
        data: "data/cifar10".into(),
        dataset: "cifar10".into(),
        device: "cpu".into(),
        attack: Some("badnets".into()),
        target: Some(0),
        mask: false,
        pruned: r.totals.selected,
        stages: vec![
            Stage {
                stage: "before".into(),
                metrics: metrics(0.91, 0.97, 0.02),
            },
            Stage {
                stage: "after pruning".into(),
                metrics: metrics(0.62, 0.08, 0.55),
            },
            Stage {
                stage: "after fine-tuning".into(),
                metrics: metrics(0.88, 0.02, 0.85),
            },
        ],
        finetune: serde_json::json!({"epochs": 10, "ratio": 0.1, "lr": 0.01}),
        scan_seconds: 12.5,
        defend_seconds: 40.0,
        command: "fmp-engine defend m.safetensors --out m-fmp.safetensors --report 'my report' <x>".into(),
        reproduce: vec![
            "fmp-engine scan m.safetensors --data data/cifar10 --out m-fmp.safetensors.scan.json".into(),
            "fmp-engine prune m.safetensors --report m-fmp.safetensors.scan.json --out m-pruned.safetensors".into(),
            "fmp-engine finetune m-pruned.safetensors --data data/cifar10 --out m-fmp.safetensors".into(),
        ],
    }
}

fn by_id<'a>(doc: &'a roxmltree::Document<'a>, id: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .find(|n| n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no element with id {id}"))
}

#[test]
fn defend_report_page_is_well_formed_and_holds_every_figure() {
    let r = synthetic(8, 8);
    let s = summary(&r);
    let page = defend_report_html(&s, &r, &scan_plot_svg(&r).unwrap()).unwrap();
    // FMP_REPORT_SAMPLE=DIR keeps this synthetic report there, to look at in a browser
    if let Some(d) = std::env::var_os("FMP_REPORT_SAMPLE") {
        write_defend_report(std::path::Path::new(&d), &s, &r).unwrap();
    }
    let doc = roxmltree::Document::parse_with_options(
        &page,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("report.html is well-formed");
    assert!(doc.root_element().has_tag_name("html"));
    for id in ["metrics", "scan", "settings", "reproduce"] {
        assert!(by_id(&doc, id).has_tag_name("section"), "{id}");
    }
    // both figures present, each an inline SVG
    for id in ["fig-metrics", "fig-scan"] {
        let fig = by_id(&doc, id);
        assert!(fig.has_tag_name("figure"));
        let svgs: Vec<_> = fig
            .descendants()
            .filter(|n| n.has_tag_name("svg"))
            .collect();
        assert_eq!(svgs.len(), 1, "{id}: one inline svg");
        assert!(fig.descendants().any(|n| n.has_tag_name("figcaption")));
    }
    // the metrics table: a header and one row per stage with the numbers in %
    let rows: Vec<_> = by_id(&doc, "metrics-table")
        .descendants()
        .filter(|n| n.has_tag_name("tr"))
        .collect();
    assert_eq!(rows.len(), 1 + s.stages.len());
    let cells: Vec<String> = rows[3]
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.text().unwrap_or("").to_string())
        .collect();
    assert_eq!(cells, ["after fine-tuning", "88.00", "2.00", "85.00"]);
    // the bar chart labels the three stages and every bar's value
    let chart_text = texts(by_id(&doc, "fig-metrics"));
    for want in [
        "before",
        "after pruning",
        "after fine-tuning",
        "97.0",
        "8.0",
        "85.0",
    ] {
        assert!(
            chart_text.iter().any(|t| t == want),
            "{want} in {chart_text:?}"
        );
    }
    // per-conv table: one row per conv
    let conv_rows = by_id(&doc, "conv-table")
        .descendants()
        .filter(|n| n.has_tag_name("tr"))
        .count();
    assert_eq!(conv_rows, 1 + r.convs.len());
    // settings and commands, escaped and intact
    let settings: String = by_id(&doc, "settings")
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("|");
    for want in ["samples", "eps", "epochs", "badnets, target 0"] {
        assert!(settings.contains(want), "{want} in {settings}");
    }
    assert_eq!(by_id(&doc, "command").text(), Some(s.command.as_str()));
    assert_eq!(by_id(&doc, "steps").text().unwrap(), s.reproduce.join("\n"));
    // nothing fetched from elsewhere: no scripts, no external links or images
    assert!(!doc
        .descendants()
        .any(|n| n.has_tag_name("script") || n.has_tag_name("link") || n.has_tag_name("img")));
}

#[test]
fn report_folder_gets_page_plot_and_summary() {
    let r = synthetic(8, 8);
    let mut s = summary(&r);
    s.attack = None;
    s.target = None;
    s.stages.clear();
    let dir = std::env::temp_dir().join(format!("fmp-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let page = write_defend_report(&dir, &s, &r).unwrap();
    assert_eq!(page, dir.join("report.html"));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Nothing was evaluated"));
    assert!(html.contains("id=\"fig-scan\""));
    roxmltree::Document::parse(&std::fs::read_to_string(dir.join("scan.svg")).unwrap()).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(j["schema"], DEFEND_SCHEMA);
    assert_eq!(j["pruned"], r.totals.selected);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["report.html", "scan.svg", "summary.json"]);
    // a file where the folder should be is a clear error
    let e = write_defend_report(&page, &s, &r).unwrap_err().to_string();
    assert!(e.contains("report.html") && e.contains("folder"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The commands end to end on a width-2 model and 60 made-up images: `scan --plot` writes an SVG with a
/// row per conv; `defend --report DIR --json` writes the report folder and prints only the summary.
#[test]
fn scan_plot_and_defend_report_from_the_command_line() {
    let root = std::env::temp_dir().join(format!("fmp-report-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    tiny_dataset(&root.join("data"), 40, 20);
    let common = ["--data", "data", "--device", "cpu"];
    let mut train = vec![
        "train",
        "--attack",
        "badnets",
        "--out",
        "m.safetensors",
        "--width",
        "2",
        "--epochs",
        "1",
        "--batch",
        "10",
    ];
    train.extend(common);
    engine(&root, &train);
    let mut scan = vec![
        "scan",
        "m.safetensors",
        "--samples",
        "4",
        "--out",
        "s.json",
        "--plot",
        "s.svg",
    ];
    scan.extend(common);
    engine(&root, &scan);
    let report = ScanReport::load(&root.join("s.json")).unwrap();
    let svg = std::fs::read_to_string(root.join("s.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let t = texts(doc.root_element());
    assert_eq!(report.convs.len(), 20);
    for c in &report.convs {
        let label = format!("{}  ({}/{})", c.name, c.selected.len(), c.channels);
        assert_eq!(t.iter().filter(|s| **s == label).count(), 1, "{label}");
    }
    assert_eq!(
        circles_of(doc.root_element(), &hex(SELECTED)),
        report.totals.selected + 1
    );

    let mut defend = vec![
        "defend",
        "m.safetensors",
        "--out",
        "d.safetensors",
        "--samples",
        "4",
        "--epochs",
        "1",
        "--ratio",
        "1",
        "--batch",
        "20",
        "--attack",
        "badnets",
        "--report",
        "rep",
        "--json",
    ];
    defend.extend(common);
    let out = engine(&root, &defend);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout must hold only the JSON:\n{stdout}"
    );
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["schema"], DEFEND_SCHEMA);
    let stages: Vec<&str> = j["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["before", "after pruning", "after fine-tuning"]);
    assert_eq!(j["stages"][0]["n"], 20);
    assert!(j["reproduce"][0]
        .as_str()
        .unwrap()
        .starts_with("fmp-engine scan m.safetensors"));
    // the progress text went to stderr
    assert!(String::from_utf8_lossy(&out.stderr).contains("FRG scan:"));
    let html = std::fs::read_to_string(root.join("rep/report.html")).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    for id in ["fig-metrics", "fig-scan"] {
        assert!(
            by_id(&doc, id).descendants().any(|n| n.has_tag_name("svg")),
            "{id}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("rep/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary, j);
    assert!(root.join("d.safetensors").is_file() && root.join("d.safetensors.scan.json").is_file());
    // the old meaning of --report (a JSON path) is a clear error before any work
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_fmp-engine"))
        .args([
            "defend",
            "m.safetensors",
            "--out",
            "x.safetensors",
            "--report",
            "r.json",
        ])
        .args(common)
        .current_dir(&root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--scan-report"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
