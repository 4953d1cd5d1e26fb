//! tools/convert_checkpoint.py on checkpoints the way users keep them, built with PyTorch from the
//! width-8 fixture: a BackdoorBench attack result (the state dict under 'model', `module.` prefixes, other
//! entries beside it), a `nn.Sequential(norm, model)` state dict (`1.` prefix, `0.mean`/`0.std`, float64) and
//! a whole pickled model. Each converts to safetensors that the engine loads with no prefix left and the
//! fixture's exact values; a state dict missing a key is an error naming it. Needs Python with torch and
//! safetensors: `$FMP_PYTHON`, else `python3`; prints SKIP without them.
use std::path::{Path, PathBuf};
use std::process::Command;

use fmp_engine::weights;

fn python() -> Option<String> {
    let py = std::env::var("FMP_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import torch, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(py)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build the checkpoints in `dir` from the fixture.
const MAKE: &str = r#"
import sys, torch
from safetensors.torch import load_file
src, d = sys.argv[1], sys.argv[2]
sd = load_file(src)
# BackdoorBench attack_result.pt: DataParallel names, metadata and data beside the model
torch.save({"model": {"module." + k: v for k, v in sd.items()}, "model_name": "preactresnet18",
            "num_classes": 10, "bd_test": {"x": torch.zeros(2, 3, 32, 32), "y": [0, 1]}},
           d + "/attack_result.pt")
# nn.Sequential(Normalize, model): '1.' prefix, the normaliser's buffers under '0.', float64
norm = {"0.mean": torch.tensor([0.4914, 0.4822, 0.4465]), "0.std": torch.tensor([0.247, 0.243, 0.261])}
torch.save({**norm, **{"1." + k: v.double() if v.is_floating_point() else v for k, v in sd.items()}},
           d + "/seq.pth")
# a whole pickled model (plain torch.nn.Module containers, so it unpickles without user classes)
root = torch.nn.Module()
for k, v in sd.items():
    *path, leaf = k.split(".")
    m = root
    for p in path:
        if p not in m._modules:
            m.add_module(p, torch.nn.Module())
        m = m._modules[p]
    if v.is_floating_point() and not leaf.startswith("running"):
        m.register_parameter(leaf, torch.nn.Parameter(v))
    else:
        m.register_buffer(leaf, v)
torch.save(root, d + "/whole.pt")
# broken: a key missing
bad = {k: v for k, v in sd.items() if k != "layer2.0.bn1.running_var"}
torch.save(bad, d + "/bad.pth")
"#;

fn convert(py: &str, args: &[&Path], extra: &[&str]) -> std::process::Output {
    Command::new(py)
        .arg(root().join("tools/convert_checkpoint.py"))
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn converts_backdoorbench_and_wrapped_checkpoints() {
    let Some(py) = python() else {
        println!("SKIP: no Python with torch + safetensors (set FMP_PYTHON)");
        return;
    };
    let fixture = root().join("tests/fixtures/preact8.safetensors");
    let dir = std::env::temp_dir().join(format!("fmp-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let made = Command::new(&py)
        .args(["-c", MAKE])
        .arg(&fixture)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (want, want_info) = weights::load(&fixture).unwrap();

    let cases: [(&str, &[&str], &[&str]); 3] = [
        (
            "attack_result.pt",
            &[],
            &[
                "'model' entry of a BackdoorBench attack result",
                "'module.'",
            ],
        ),
        (
            "seq.pth",
            &[],
            &["'1.'", "dropped 2 key(s)", "0.mean", "float64"],
        ),
        ("whole.pt", &["--trust-pickle"], &["whole Module model"]),
    ];
    for (name, extra, says) in cases {
        let out_path = dir.join(format!("{name}.safetensors"));
        let out = convert(&py, &[&dir.join(name), &out_path], extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for s in says {
            assert!(stdout.contains(s), "{name}: '{s}' not in:\n{stdout}");
        }
        assert!(stdout.contains("width 8, 10 classes"), "{stdout}");
        let (got, info) = weights::load(&out_path).unwrap();
        assert_eq!(info.stripped_prefix, None, "{name}: the engine's names");
        // float32 (plus the int64 counters, as in the fixture), nothing left for the loader to drop
        assert!(info.ignored.is_empty(), "{name}: {info:?}");
        assert_eq!(info.converted, want_info.converted, "{name}: dtypes");
        assert_eq!(got.tensors, want.tensors, "{name}: values");
    }

    // the safe loader refuses a whole pickled model and says what to do
    let out = convert(
        &py,
        &[&dir.join("whole.pt"), &dir.join("w.safetensors")],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--trust-pickle"),
        "{err}"
    );
    // a missing key is named, and nothing is written
    let bad_out = dir.join("bad.safetensors");
    let out = convert(&py, &[&dir.join("bad.pth"), &bad_out], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("layer2.0.bn1.running_var"),
        "{err}"
    );
    assert!(!bad_out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
