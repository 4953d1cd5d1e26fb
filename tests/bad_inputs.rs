//! A catalogue of bad inputs, each given to the built binary: broken weights files, datasets, scan
//! reports, prune masks, devices and flags. For each: non-zero exit, an error naming the problem, no panic,
//! and nothing left in the folder the command ran in (outputs go there). Every fixture is made here
//! (width-8 models, a 40-image random CIFAR-10-layout dataset), so no real data is needed; each command
//! fails before any real work, so the whole table runs in seconds.
mod cli_support;

use std::path::Path;

use cli_support::*;
use fmp_engine::fmp::select::{
    ConvReport, ReportModel, ReportSettings, ReportTotals, ScanParams, ScanReport, SCAN_SCHEMA,
};
use fmp_engine::model::ModelConfig;
use fmp_engine::weights::{self, StateDict};
use safetensors::tensor::{Dtype, TensorView};

/// Write a safetensors file from (name, dtype, shape, raw bytes).
fn write_st(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, &None).unwrap()).unwrap();
}

/// The state dict as (name, F32, shape, bytes), with `f` applied to each entry first.
fn f32_entries(sd: &StateDict) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    sd.tensors
        .iter()
        .map(|(n, t)| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), Dtype::F32, t.shape.clone(), bytes)
        })
        .collect()
}

fn edited(sd: &StateDict, path: &Path, f: impl FnOnce(&mut StateDict)) {
    let mut sd = sd.clone();
    f(&mut sd);
    weights::save(path, &sd).unwrap();
}

fn report_for(model: &fmp_engine::model::PreActResNet18) -> ScanReport {
    let convs: Vec<ConvReport> = model
        .convs()
        .iter()
        .map(|c| {
            let ch = c.params.c_out as usize;
            ConvReport {
                index: c.index,
                name: c.name.clone(),
                channels: ch,
                scores: vec![0.5; ch],
                true_prob: vec![0.5; ch],
                margin: vec![0.0; ch],
                selected: vec![0],
                stability: None,
            }
        })
        .collect();
    ScanReport {
        schema: SCAN_SCHEMA,
        model: ReportModel {
            path: "good.safetensors".into(),
            width: 8,
            num_classes: 10,
        },
        settings: ReportSettings {
            params: ScanParams {
                samples: 4,
                p: 8,
                alpha: 1.0 / 255.0,
                eps: 4.0 / 255.0,
                seed: 0,
                reference_order: false,
            },
            data: "data".into(),
            device: "cpu".into(),
            chunk_channels: 1,
            score: "acc".into(),
            repeats: 1,
            aggregate: "mean".into(),
            steps: 1,
        },
        totals: ReportTotals {
            convs: convs.len(),
            feature_maps: convs.iter().map(|c| c.channels).sum(),
            selected: convs.len(),
        },
        convs,
        seconds: 0.0,
        stability: None,
        trigger: None,
    }
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Every one of these (case-insensitive) must appear in stderr.
    expect: Vec<&'static str>,
}

fn case(name: &'static str, args: &str, expect: &[&'static str]) -> Case {
    Case {
        name,
        args: args.split_whitespace().map(String::from).collect(),
        expect: expect.to_vec(),
    }
}

#[test]
fn every_bad_input_fails_cleanly() {
    let root = scratch("bad_inputs");
    let inp = root.join("in");
    std::fs::create_dir_all(&inp).unwrap();
    let model = width8(&inp.join("good.safetensors"));
    tiny_cifar(&inp.join("data"), 40, 20);
    let good = std::fs::read(inp.join("good.safetensors")).unwrap();
    let sd = weights::load(inp.join("good.safetensors")).unwrap().0;

    // --- weights files
    std::fs::write(inp.join("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    std::fs::write(inp.join("empty.safetensors"), b"").unwrap();
    let mut absurd = good.clone();
    absurd[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(inp.join("absurd_header.safetensors"), &absurd).unwrap();
    let mut long = good.clone();
    long[..8].copy_from_slice(&(good.len() as u64 + 100).to_le_bytes());
    std::fs::write(inp.join("header_past_end.safetensors"), &long).unwrap();
    let mut garbage = 16u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"this is not json");
    std::fs::write(inp.join("garbage_header.safetensors"), &garbage).unwrap();
    std::fs::write(
        inp.join("text.safetensors"),
        b"PK\x03\x04 a zip, say a torch .pt",
    )
    .unwrap();
    let mut entries = f32_entries(&sd);
    for e in entries.iter_mut().filter(|e| e.0 == "conv1.weight") {
        e.1 = Dtype::U8;
        e.3 = vec![1u8; e.2.iter().product()];
    }
    write_st(&inp.join("u8.safetensors"), &entries);
    edited(&sd, &inp.join("shape.safetensors"), |sd| {
        let t = sd.get_mut("conv1.weight").unwrap();
        t.shape = vec![8, 3, 5, 5];
        t.data = vec![0.0; 8 * 3 * 25];
    });
    edited(&sd, &inp.join("nan.safetensors"), |sd| {
        sd.get_mut("layer2.0.conv1.weight").unwrap().data[5] = f32::NAN;
    });
    edited(&sd, &inp.join("inf.safetensors"), |sd| {
        sd.get_mut("layer3.1.bn2.running_var").unwrap().data[0] = f32::INFINITY;
    });
    edited(&sd, &inp.join("missing_key.safetensors"), |sd| {
        sd.remove("linear.bias");
    });
    edited(&sd, &inp.join("extra_key.safetensors"), |sd| {
        sd.insert("layer5.0.conv1.weight", vec![2], vec![0.0, 1.0]);
    });
    edited(&sd, &inp.join("linear_mismatch.safetensors"), |sd| {
        sd.get_mut("linear.bias").unwrap().data.truncate(7);
        sd.get_mut("linear.bias").unwrap().shape = vec![7];
    });
    save_model(&inp.join("gtsrb.safetensors"), ModelConfig::gtsrb(8), 1);
    std::fs::create_dir_all(inp.join("dir.safetensors")).unwrap();

    // --- datasets
    std::fs::create_dir_all(inp.join("empty_data")).unwrap();
    let bad_size = inp.join("bad_size");
    tiny_cifar(&bad_size, 40, 20);
    let mut b = cifar_records(40, 1);
    b.truncate(b.len() - 100);
    std::fs::write(bad_size.join("data_batch_1.bin"), b).unwrap();
    let bad_label = inp.join("bad_label");
    tiny_cifar(&bad_label, 40, 20);
    let mut b = cifar_records(40, 1);
    b[3073 * 7] = 200;
    std::fs::write(bad_label.join("data_batch_1.bin"), b).unwrap();
    let c100 = inp.join("cifar100");
    std::fs::create_dir_all(&c100).unwrap();
    let rec100: Vec<u8> = (0..20)
        .flat_map(|i| {
            let mut r = vec![0u8, (i % 100) as u8];
            r.extend(std::iter::repeat_n(7u8, 3072));
            r
        })
        .collect();
    std::fs::write(c100.join("train.bin"), &rec100).unwrap();
    std::fs::write(c100.join("test.bin"), &rec100).unwrap();
    std::fs::write(c100.join("fine_label_names.txt"), "x\n").unwrap();

    // --- scan reports
    let rep = report_for(&model);
    rep.save(&inp.join("good.json")).unwrap();
    let js = serde_json::to_value(&rep).unwrap();
    let write_json = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = js.clone();
        f(&mut v);
        std::fs::write(inp.join(name), serde_json::to_string(&v).unwrap()).unwrap();
    };
    std::fs::write(inp.join("not_json.json"), "{\"model\": ").unwrap();
    write_json("few_convs.json", &|v| {
        v["convs"].as_array_mut().unwrap().truncate(5);
    });
    write_json("sel_range.json", &|v| {
        v["convs"][3]["selected"] = serde_json::json!([999])
    });
    write_json("score_count.json", &|v| {
        v["convs"][2]["scores"] = serde_json::json!([0.5])
    });
    write_json("other_width.json", &|v| {
        v["convs"][0]["channels"] = 16.into()
    });
    write_json("unknown_conv.json", &|v| {
        v["convs"][4]["name"] = "layer9.0.conv1".into()
    });
    write_json("neg_channel.json", &|v| {
        v["convs"][1]["selected"] = serde_json::json!([-1])
    });

    // --- prune masks
    std::fs::write(inp.join("mask_bad.json"), "[1, 2").unwrap();
    std::fs::write(
        inp.join("mask_conv.json"),
        r#"{"pruned": {"layer7.0.conv9": [0]}}"#,
    )
    .unwrap();
    std::fs::write(
        inp.join("mask_range.json"),
        r#"{"pruned": {"conv1": [64]}}"#,
    )
    .unwrap();
    std::fs::write(
        inp.join("mask_type.json"),
        r#"{"pruned": {"conv1": "all"}}"#,
    )
    .unwrap();

    let d = "--data ../in/data --device cpu";
    let scan = |extra: &str| format!("scan ../in/good.safetensors {d} --out r.json {extra}");
    let ft =
        |extra: &str| format!("finetune ../in/good.safetensors {d} --out f.safetensors {extra}");
    let train =
        |extra: &str| format!("train {d} --attack badnets --out t.safetensors --width 8 {extra}");
    let ev =
        |w: &str, extra: &str| format!("eval ../in/{w} --data ../in/data --device cpu {extra}");
    let prune = |r: &str| {
        format!("prune ../in/good.safetensors --report ../in/{r} --out p.safetensors --device cpu")
    };
    let cases: Vec<Case> = vec![
        // weights
        case("weights missing", &ev("nope.safetensors", ""), &["nope.safetensors", "cannot be read"]),
        case("weights truncated", &ev("truncated.safetensors", ""), &["truncated.safetensors", "truncated or corrupt"]),
        case("weights empty", &ev("empty.safetensors", ""), &["empty.safetensors", "not a valid safetensors"]),
        case("weights absurd header length", &ev("absurd_header.safetensors", ""), &["absurd_header", "header"]),
        case("weights header past end", &ev("header_past_end.safetensors", ""), &["header_past_end", "not a valid safetensors"]),
        case("weights header not JSON", &ev("garbage_header.safetensors", ""), &["garbage_header", "not a valid safetensors"]),
        case("weights not safetensors", &ev("text.safetensors", ""), &["text.safetensors", "not a valid safetensors"]),
        case("weights wrong dtype", &ev("u8.safetensors", ""), &["conv1.weight", "dtype"]),
        case("weights wrong shape", &ev("shape.safetensors", ""), &["conv1.weight", "shape"]),
        case("weights NaN", &ev("nan.safetensors", ""), &["layer2.0.conv1.weight", "nan"]),
        case("weights Inf", &ev("inf.safetensors", ""), &["layer3.1.bn2.running_var"]),
        case("weights missing key", &ev("missing_key.safetensors", ""), &["linear.bias", "missing"]),
        case("weights extra key", &ev("extra_key.safetensors", ""), &["layer5.0.conv1.weight"]),
        case("weights linear mismatch", &ev("linear_mismatch.safetensors", ""), &["linear"]),
        case("weights is a folder", &ev("dir.safetensors", ""), &["dir.safetensors", "folder"]),
        case("weights class count vs data (eval)", &ev("gtsrb.safetensors", ""), &["43 classes", "cifar10"]),
        case("weights class count vs data (scan)", &format!("scan ../in/gtsrb.safetensors {d} --out r.json"), &["43 classes", "cifar10"]),
        case("weights class count (finetune)", &format!("finetune ../in/gtsrb.safetensors {d} --out f.safetensors"), &["43 classes"]),
        // datasets
        case("data folder missing", "scan ../in/good.safetensors --data ../in/nowhere --out r.json --device cpu", &["nowhere", "no dataset"]),
        case("data folder empty", "scan ../in/good.safetensors --data ../in/empty_data --out r.json --device cpu", &["empty_data", "no dataset"]),
        case("data is a file", "scan ../in/good.safetensors --data ../in/good.json --out r.json --device cpu", &["good.json", "not a directory"]),
        case("data partial record", "scan ../in/good.safetensors --data ../in/bad_size --out r.json --device cpu", &["data_batch_1.bin", "record"]),
        case("data label out of range", "scan ../in/good.safetensors --data ../in/bad_label --out r.json --device cpu", &["data_batch_1.bin", "label"]),
        case("data of another class count", "scan ../in/good.safetensors --data ../in/cifar100 --out r.json --device cpu", &["10 classes", "cifar100"]),
        case("eval unknown dataset kind", &ev("good.safetensors", "--dataset imagenet"), &["imagenet"]),
        // reports
        case("report missing", &prune("none.json"), &["none.json", "cannot be read"]),
        case("report not JSON", &prune("not_json.json"), &["not_json.json", "not a scan report"]),
        case("report conv count", &prune("few_convs.json"), &["few_convs.json", "5 convs"]),
        case("report selection out of range", &prune("sel_range.json"), &["sel_range.json", "999"]),
        case("report scores vs channels", &prune("score_count.json"), &["score_count.json", "scores"]),
        case("report of another width", &prune("other_width.json"), &["other_width.json", "channels"]),
        case("report unknown conv", &prune("unknown_conv.json"), &["unknown_conv.json", "layer9.0.conv1"]),
        case("report negative channel", &prune("neg_channel.json"), &["neg_channel.json", "not a scan report"]),
        // masks
        case("mask missing", &ft("--mask ../in/no_mask.json"), &["--mask", "no_mask.json"]),
        case("mask not JSON", &ft("--mask ../in/mask_bad.json"), &["mask_bad.json", "not a prune mask"]),
        case("mask unknown conv", &ft("--mask ../in/mask_conv.json"), &["mask_conv.json", "layer7.0.conv9"]),
        case("mask channel out of range", &ft("--mask ../in/mask_range.json"), &["mask_range.json", "64"]),
        case("mask wrong type", &ft("--mask ../in/mask_type.json"), &["mask_type.json", "not a prune mask"]),
        // devices
        case("device unknown", "eval ../in/good.safetensors --data ../in/data --device tpu", &["--device", "tpu"]),
        case("device index not a number", "eval ../in/good.safetensors --data ../in/data --device cuda:x", &["--device", "cuda:x"]),
        case("device absent GPU", "eval ../in/good.safetensors --data ../in/data --device cuda:7", &["cuda"]),
        // flags (the four bugs of issue 12 first)
        case("finetune --batch 0", &ft("--batch 0"), &["--batch", "2..="]),
        case("train --epochs 0", &train("--epochs 0"), &["--epochs", "1..="]),
        case("train --poison-rate 1.5", &train("--poison-rate 1.5"), &["--poison-rate", "[0, 1]"]),
        case("train --width 0", &format!("train {d} --attack badnets --out t.safetensors --width 0"), &["--width", "1..=512"]),
        case("train --lr inf", &train("--lr inf"), &["--lr", "finite"]),
        case("train --batch too large for usize", &train("--batch 99999999999999999999999"), &["--batch"]),
        case("train --target beyond classes", &train("--target 12 --epochs 1"), &["--target 12", "0..10"]),
        case("train --limit 1", &train("--limit 1"), &["--limit", "2..="]),
        case("finetune --momentum 1", &ft("--momentum 1"), &["--momentum", "[0, 1)"]),
        case("finetune --ratio 0", &ft("--ratio 0"), &["--ratio", "(0, 1]"]),
        case("finetune --lr -1", &ft("--lr=-1"), &["--lr"]),
        case("finetune --ft-seed -3", &ft("--ft-seed=-3"), &["--ft-seed"]),
        case("scan --out missing folder", &format!("scan ../in/good.safetensors {d} --out missing/dir/report.json"), &["--out", "missing/dir", "does not exist"]),
        case("scan --out is a folder", &format!("scan ../in/good.safetensors {d} --out ../in"), &["--out", "folder"]),
        case("scan --alpha nan", &scan("--alpha nan"), &["--alpha", "finite"]),
        case("scan --eps 0", &scan("--eps 0"), &["--eps", "(0, 1]"]),
        case("scan --eps 4/0", &scan("--eps 4/0"), &["--eps"]),
        case("scan --samples 0", &scan("--samples 0"), &["--samples", "1..="]),
        case("scan --samples beyond data", &scan("--samples 1000"), &["--samples 1000", "40"]),
        case("scan --p 0", &scan("--p 0"), &["--p", "1..="]),
        case("scan --p wider than a conv", &scan("--p 9"), &["--p 9", "conv1"]),
        case("scan --chunk 0", &scan("--chunk 0"), &["--chunk"]),
        case("scan --seed -1", &scan("--seed=-1"), &["--seed"]),
        case("eval --limit 0", &ev("good.safetensors", "--limit 0"), &["--limit"]),
        case("eval --batch 0", &ev("good.safetensors", "--batch 0"), &["--batch"]),
        case("eval --target beyond classes", &ev("good.safetensors", "--attack badnets --target 10"), &["--target 10", "0..10"]),
        case("defend --target beyond classes", &format!("defend ../in/good.safetensors {d} --out f.safetensors --attack badnets --target 11"), &["--target 11"]),
        case("defend: fine-tuning subset empty", &format!("defend ../in/good.safetensors {d} --out f.safetensors --ratio 0.1"), &["--ratio 0.1", "leaves 0 images"]),
        case("demo --ft-epochs 0", "demo --ft-epochs 0", &["--ft-epochs"]),
        case("bench scan --layers 21", "bench scan --layers 21 --device cpu", &["--layers", "1..=20"]),
        case("prune --out missing folder", "prune ../in/good.safetensors --report ../in/good.json --out no/where.safetensors", &["--out", "does not exist"]),
        // flags from issues 11 and 13, range-checked alike
        case("scan --repeats 0", &scan("--repeats 0"), &["--repeats", "1..="]),
        case("scan --steps 0", &scan("--steps 0"), &["--steps", "1..="]),
        case("scan --trigger-images 0", &scan("--attack badnets --trigger-images 0"), &["--trigger-images", "1..="]),
        case("scan --resume with --repeats 2", &scan("--resume --repeats 2"), &["--resume", "--repeats 2"]),
        case("scan --shard with --repeats 3", &scan("--shard 1/2 --repeats 3"), &["--shard", "--repeats 3"]),
        case("scan --resume with --recipe margin4", &scan("--resume --recipe margin4"), &["--resume", "--recipe margin4"]),
        case("scan --recipe unknown", &scan("--recipe best"), &["--recipe", "best"]),
        case("scan --shard with --attack", &scan("--shard 1/2 --attack badnets"), &["--attack", "--shard"]),
        case("scan --plot missing folder", &scan("--plot no/where.svg"), &["--plot", "does not exist"]),
        case("prune --random -1", "prune ../in/good.safetensors --random=-1 --out p.safetensors --device cpu", &["--random"]),
        case("prune --random with --p 0", "prune ../in/good.safetensors --random 1 --p 0 --out p.safetensors --device cpu", &["--p", "1..="]),
        case("defend --fp-images 0", &format!("defend ../in/good.safetensors {d} --out f.safetensors --method fine-pruning --fp-images 0"), &["--fp-images", "1..="]),
        case("defend --report with --controls", &format!("defend ../in/good.safetensors {d} --out f.safetensors --controls --report rep"), &["--report", "--controls"]),
        case("defend --method oracle without --attack", &format!("defend ../in/good.safetensors {d} --out f.safetensors --method oracle"), &["--method oracle", "--attack"]),
        case("defend --clp-u nan", &format!("defend ../in/good.safetensors {d} --out f.safetensors --method clp --clp-u nan"), &["--clp-u", "finite"]),
        case("bench train --batch 1", "bench train --batch 1 --device cpu", &["--batch", "2..="]),
        case("bench train --steps 0", "bench train --steps 0 --device cpu", &["--steps", "1..="]),
        case("study --width 0", "study --width 0", &["--width", "1..=512"]),
        case("study --ft-ratio 2", "study --ft-ratio 2", &["--ft-ratio", "(0, 1]"]),
    ];
    assert!(cases.len() >= 40, "catalogue has {} cases", cases.len());

    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let cwd = root.join(format!("case{i:02}"));
        std::fs::create_dir_all(&cwd).unwrap();
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let out = run_in(&cwd, &args);
        let (stdout, stderr) = text(&out);
        let low = stderr.to_lowercase();
        let mut why = Vec::new();
        if out.status.success() {
            why.push("exited 0".to_string());
        }
        if low.contains("panicked") {
            why.push("panicked".into());
        }
        for e in &c.expect {
            if !low.contains(&e.to_lowercase()) {
                why.push(format!("stderr lacks '{e}'"));
            }
        }
        let left = files_under(&cwd);
        if !left.is_empty() {
            why.push(format!("left files {left:?}"));
        }
        if std::env::var_os("BAD_INPUTS_SHOW").is_some() {
            eprintln!("[{}] {}", c.name, stderr.lines().next().unwrap_or(""));
        }
        if !why.is_empty() {
            failures.push(format!(
                "[{}] {}: {}\n  stderr: {}\n  stdout: {}",
                c.name,
                c.args.join(" "),
                why.join("; "),
                stderr.trim(),
                stdout.trim()
            ));
        }
    }
    // The inputs are untouched and no stray temporary file was left beside them.
    let inputs = files_under(&inp);
    assert!(
        !inputs
            .iter()
            .any(|f| f.contains(".tmp") || f.contains("probe")),
        "{inputs:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!("{} bad inputs, each refused cleanly", cases.len());
}
