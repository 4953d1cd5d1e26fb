//! `--json` on every subcommand that reports numbers: stdout is one JSON object and nothing else (the
//! progress text goes to stderr), with the fields docs/report.md lists, on a width-2 model and made-up data.
mod cli_support;
use cli_support::{engine_json, tiny_dataset};

use fmp_engine::fmp::select::{ScanReport, SCAN_SCHEMA};

fn keys(v: &serde_json::Value, want: &[&str], what: &str) {
    for k in want {
        assert!(v.get(k).is_some(), "{what}: no '{k}' in {v}");
    }
}

#[test]
fn every_subcommand_prints_one_json_object() {
    let root = std::env::temp_dir().join(format!("fmp-cli-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    tiny_dataset(&root.join("data"), 200, 20);
    let r = root.as_path();
    let cpu = ["--data", "data", "--device", "cpu", "--json"];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(cpu.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: &[&str]| {
        let v = with(args);
        engine_json(r, &v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let info = engine_json(r, &["info", "--no-cuda", "--json"]);
    keys(&info, &["version", "threads", "backends"], "info");
    assert_eq!(info["backends"]["cpu"]["available"], true);
    assert_eq!(info["backends"]["cuda"]["probed"], false);

    let t = run(&[
        "train",
        "--attack",
        "badnets",
        "--out",
        "m.safetensors",
        "--width",
        "2",
        "--epochs",
        "2",
        "--batch",
        "50",
        "--limit",
        "100",
    ]);
    keys(
        &t,
        &["out", "dataset", "width", "images", "epochs", "metrics"],
        "train",
    );
    assert_eq!(t["images"], 100);
    assert_eq!(t["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(t["metrics"]["n"], 20);
    assert!(t["metrics"]["asr"].is_number());

    let e = run(&["eval", "m.safetensors", "--attack", "badnets"]);
    keys(&e, &["acc", "asr", "ra", "n"], "eval");
    // the same model, the same test images: train's metrics are eval's
    assert_eq!(e["acc"], t["metrics"]["acc"]);
    assert_eq!(e["asr"], t["metrics"]["asr"]);

    let s = run(&["scan", "m.safetensors", "--samples", "4", "--out", "s.json"]);
    keys(
        &s,
        &[
            "schema", "report", "model", "settings", "totals", "seconds", "selected",
        ],
        "scan",
    );
    assert_eq!(s["schema"], SCAN_SCHEMA);
    let report = ScanReport::load(&root.join("s.json")).unwrap();
    assert_eq!(report.schema, SCAN_SCHEMA);
    assert_eq!(s["totals"]["selected"], report.totals.selected);
    assert_eq!(s["selected"].as_object().unwrap().len(), report.convs.len());
    assert_eq!(
        s["selected"]["layer4.1.conv2"],
        serde_json::json!(report.convs[19].selected)
    );

    let p = engine_json(
        r,
        &[
            "prune",
            "m.safetensors",
            "--report",
            "s.json",
            "--out",
            "p.safetensors",
            "--mask",
            "--json",
        ],
    );
    assert_eq!(p["pruned"], report.totals.selected);
    assert_eq!(p["mask"], "p.safetensors.mask.json");

    let f = run(&[
        "finetune",
        "p.safetensors",
        "--out",
        "f.safetensors",
        "--epochs",
        "1",
        "--batch",
        "10",
    ]);
    keys(
        &f,
        &[
            "out",
            "images",
            "mask",
            "masked_filters",
            "settings",
            "epochs",
        ],
        "finetune",
    );
    assert_eq!(f["images"], 20);
    assert_eq!(f["masked_filters"], report.totals.selected);
    assert_eq!(f["epochs"][0]["epoch"], 1);

    // defend with its controls: one object with a row per defense stage
    let c = run(&[
        "defend",
        "m.safetensors",
        "--out",
        "c.safetensors",
        "--controls",
        "--attack",
        "badnets",
        "--recipe",
        "paper",
        "--samples",
        "4",
        "--epochs",
        "1",
        "--batch",
        "10",
    ]);
    keys(
        &c,
        &["schema", "out", "method", "rows", "seconds"],
        "defend --controls",
    );
    let names: Vec<&str> = c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "before",
            "fmp pruned",
            "fmp",
            "finetune-only",
            "random pruned",
            "random"
        ],
        "{c}"
    );
    assert!(c["rows"][2]["metrics"]["asr"].is_number(), "{c}");
    assert_eq!(c["seconds"].as_array().unwrap().len(), 3);

    let d = run(&[
        "demo",
        "--width",
        "2",
        "--train-images",
        "40",
        "--test-images",
        "20",
        "--epochs",
        "1",
        "--ft-epochs",
        "1",
        "--workdir",
        "demo",
    ]);
    keys(
        &d,
        &["trained", "defended", "before", "after", "seconds"],
        "demo",
    );
    assert_eq!(d["before"]["n"], 20);
    assert!(d["after"]["asr"].is_number());
    assert!(root.join(d["defended"].as_str().unwrap()).is_file());

    let b = engine_json(
        r,
        &[
            "bench",
            "scan",
            "--width",
            "2",
            "--samples",
            "2",
            "--device",
            "cpu",
            "--json",
            "-",
        ],
    );
    assert!(b.is_object(), "{b}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A report from a newer engine is refused with a clear message; one without the field reads as version 1.
#[test]
fn scan_report_schema_is_checked() {
    let dir = std::env::temp_dir().join(format!("fmp-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = serde_json::json!({
        "model": {"path": "m", "width": 2, "num_classes": 10},
        "settings": {"samples": 4, "p": 2, "alpha": 0.004, "eps": 0.016, "seed": 0, "reference_order": false,
                     "data": "d", "device": "cpu", "chunk_channels": 2},
        "convs": [{"index": 0, "name": "conv1", "channels": 2, "scores": [0.5, 0.25], "true_prob": [0.1, 0.2],
                   "selected": [1]}],
        "totals": {"convs": 1, "feature_maps": 2, "selected": 1},
        "seconds": 1.0
    });
    let old = dir.join("old.json");
    std::fs::write(&old, base.to_string()).unwrap();
    assert_eq!(ScanReport::load(&old).unwrap().schema, 1);
    let mut newer = base.clone();
    newer["schema"] = (SCAN_SCHEMA + 1).into();
    let p = dir.join("new.json");
    std::fs::write(&p, newer.to_string()).unwrap();
    let e = ScanReport::load(&p).unwrap_err().to_string();
    assert!(e.contains("new.json") && e.contains("newer"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
