//! `fmp-engine eval` on a model trained by PyTorch (tests/fixtures/trained8.safetensors, stored as
//! f16) gives PyTorch's accuracy and predictions on the first 1000 CIFAR-10 test images
//! (tests/fixtures/trained8_eval.json, written by tools/make_fixtures.py). Needs the real data:
//! FMP_DATA or ../shared/data; skipped with a message otherwise.
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::data::{self, DatasetKind, Split};
use fmp_engine::model::{predict, PreActResNet18};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn eval_matches_pytorch_on_trained_model() {
    let Some(root) = data::data_root() else {
        println!("SKIP eval_matches_pytorch_on_trained_model: no data (set FMP_DATA or provide ../shared/data)");
        return;
    };
    let dir = root.join("cifar10");
    if !dir.join("test_batch.bin").is_file() {
        println!(
            "SKIP eval_matches_pytorch_on_trained_model: {} has no test_batch.bin",
            dir.display()
        );
        return;
    }
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("trained8_eval.json")).unwrap())
            .unwrap();
    let n = want["n"].as_u64().unwrap() as usize;
    let want_preds: Vec<u32> = want["preds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let margins: Vec<f64> = want["margins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want_correct = want["correct"].as_u64().unwrap() as i64;

    // Library path: per-image predictions; they may differ only on near-ties of PyTorch's logits.
    let (model, info) = PreActResNet18::load(
        Arc::new(CpuBackend::new()),
        &fixture("trained8.safetensors"),
        DatasetKind::Cifar10,
    )
    .unwrap();
    assert!(
        info.converted.iter().any(|(d, _)| d == "F16"),
        "fixture is stored as f16"
    );
    let mut ds = data::load_split(&dir, None, Split::Test).unwrap();
    ds.truncate(n);
    let preds = predict(&model, &ds, 200).unwrap();
    let mut mismatches = 0;
    for i in 0..n {
        if preds[i] != want_preds[i] {
            mismatches += 1;
            assert!(
                margins[i] < 1e-3,
                "image {i}: engine says {} PyTorch {} (PyTorch top-2 margin {})",
                preds[i],
                want_preds[i],
                margins[i]
            );
        }
    }
    assert!(mismatches <= 2, "{mismatches} prediction mismatches");

    // CLI path: the acc/n JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_fmp-engine"))
        .args([
            "eval",
            fixture("trained8.safetensors").to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
        ])
        .args([
            "--limit",
            &n.to_string(),
            "--json",
            "--device",
            "cpu",
            "--batch",
            "250",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(got["n"].as_u64().unwrap() as usize, n);
    let correct = got["correct"].as_u64().unwrap() as i64;
    assert!(
        (correct - want_correct).abs() <= mismatches as i64,
        "engine {correct} correct, PyTorch {want_correct}"
    );
    let acc = got["acc"].as_f64().unwrap();
    assert!((acc - correct as f64 / n as f64).abs() < 1e-12);
    println!(
        "engine acc {acc} vs PyTorch {} ({mismatches} near-tie mismatches)",
        want["acc"]
    );
}
