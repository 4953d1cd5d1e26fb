//! safetensors loader: every bad-input case is a clear `Error::Weights` naming the file and the key;
//! f16/bf16/f64 inputs convert; wrapper prefixes are stripped and reported; saving is atomic.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::model::{ModelConfig, PreActResNet18};
use fmp_engine::weights::{self, StateDict};
use fmp_engine::Error;
use safetensors::tensor::{Dtype, TensorView};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preact8.safetensors")
}

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("fmp_wt_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn base() -> StateDict {
    weights::load(fixture()).unwrap().0
}

/// Write `sd` with each float tensor encoded as `dtype` and keys renamed by `rename`.
fn write_as(
    path: &Path,
    sd: &StateDict,
    dtype: Dtype,
    rename: impl Fn(&str) -> String,
    extra: &[(&str, Vec<usize>, Vec<f32>)],
) {
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, t) in &sd.tensors {
        let (d, bytes): (Dtype, Vec<u8>) = if sd.int64_keys.contains(k) {
            (
                Dtype::I64,
                t.data
                    .iter()
                    .flat_map(|v| (*v as i64).to_le_bytes())
                    .collect(),
            )
        } else {
            let b = match dtype {
                Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F64 => t
                    .data
                    .iter()
                    .flat_map(|v| (*v as f64).to_le_bytes())
                    .collect(),
                Dtype::F16 => t
                    .data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => t
                    .data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                d => panic!("{d:?}"),
            };
            (dtype, b)
        };
        bufs.push((rename(k), d, t.shape.clone(), bytes));
    }
    for (k, s, v) in extra {
        bufs.push((
            k.to_string(),
            Dtype::F32,
            s.clone(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, &None).unwrap()).unwrap();
}

/// The load error for `path`, checked to be `Error::Weights` naming the file and every `needles`.
fn load_err(path: &Path, needles: &[&str]) -> String {
    let e = weights::load(path).expect_err("load must fail");
    assert!(
        matches!(e, Error::Weights { .. }),
        "expected Error::Weights, got {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "error does not mention '{n}': {msg}");
    }
    println!("{msg}");
    msg
}

#[test]
fn loads_fixture_and_infers_dims() {
    let (sd, info) = weights::load(fixture()).unwrap();
    assert_eq!((info.width, info.num_classes), (8, 10));
    assert_eq!(sd.len(), weights::expected_keys(8, 10).len());
    assert!(info.stripped_prefix.is_none() && info.ignored.is_empty());
}

#[test]
fn width_and_classes_inferred_for_other_models() {
    let t = TmpDir::new("dims");
    let m =
        PreActResNet18::new_random(Arc::new(CpuBackend::new()), ModelConfig::gtsrb(4), 7).unwrap();
    let p = t.file("w4k43.safetensors");
    m.save(&p).unwrap();
    let (sd, info) = weights::load(&p).unwrap();
    assert_eq!((info.width, info.num_classes), (4, 43));
    assert_eq!(
        sd.get("layer4.0.shortcut.0.weight").unwrap().shape,
        vec![32, 16, 1, 1]
    );
    assert_eq!(sd.get("linear.weight").unwrap().shape, vec![43, 32]);
    let names: Vec<String> = std::fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["w4k43.safetensors".to_string()],
        "no temporary file left behind"
    );
}

#[test]
fn truncated_and_corrupt_files() {
    let t = TmpDir::new("trunc");
    let bytes = std::fs::read(fixture()).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100, 7, 0] {
        let p = t.file(&format!("cut{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        load_err(&p, &["safetensors"]);
    }
    let p = t.file("garbage.safetensors");
    let mut g = bytes.clone();
    g[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&p, &g).unwrap();
    load_err(&p, &[]);
    let missing = t.file("nope.safetensors");
    let e = weights::load(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn missing_unexpected_and_misshaped_keys() {
    let t = TmpDir::new("keys");
    let sd = base();
    let id = |k: &str| k.to_string();

    let mut s = sd.clone();
    s.remove("layer2.1.bn2.running_var");
    let p = t.file("missing.safetensors");
    write_as(&p, &s, Dtype::F32, id, &[]);
    load_err(&p, &["missing key", "layer2.1.bn2.running_var"]);

    let p = t.file("unexpected.safetensors");
    write_as(
        &p,
        &sd,
        Dtype::F32,
        id,
        &[("layer2.1.bn3.weight", vec![16], vec![1.0; 16])],
    );
    load_err(&p, &["unexpected key", "layer2.1.bn3.weight"]);

    let mut s = sd.clone();
    s.get_mut("layer3.0.conv1.weight").unwrap().shape = vec![32, 16, 9, 1];
    let p = t.file("shape.safetensors");
    write_as(&p, &s, Dtype::F32, id, &[]);
    load_err(
        &p,
        &["layer3.0.conv1.weight", "[32, 16, 9, 1]", "[32, 16, 3, 3]"],
    );

    // A linear layer of the wrong width for conv1's base width.
    let mut s = sd.clone();
    let lw = s.get_mut("linear.weight").unwrap();
    lw.shape = vec![20, 32];
    let p = t.file("linear.safetensors");
    write_as(&p, &s, Dtype::F32, id, &[]);
    load_err(&p, &["linear.weight", "[20, 32]"]);

    // A missing num_batches_tracked counter is not needed by the computation: filled with a note.
    let mut s = sd.clone();
    s.remove("layer1.0.bn1.num_batches_tracked");
    let p = t.file("nbt.safetensors");
    write_as(&p, &s, Dtype::F32, id, &[]);
    let (got, info) = weights::load(&p).unwrap();
    assert_eq!(
        got.get("layer1.0.bn1.num_batches_tracked").unwrap().data,
        vec![0.0]
    );
    assert!(
        info.notes.iter().any(|n| n.contains("num_batches_tracked")),
        "{:?}",
        info.notes
    );
}

#[test]
fn non_finite_and_invalid_values() {
    let t = TmpDir::new("nan");
    for (key, idx, v, what) in [
        ("layer1.1.conv2.weight", 17, f32::NAN, "non-finite"),
        ("layer4.0.bn1.bias", 3, f32::INFINITY, "non-finite"),
        ("linear.bias", 9, f32::NEG_INFINITY, "non-finite"),
        (
            "layer2.0.bn2.running_var",
            5,
            -0.5,
            "negative running variance",
        ),
    ] {
        let mut s = base();
        s.get_mut(key).unwrap().data[idx] = v;
        let p = t.file("bad.safetensors");
        write_as(&p, &s, Dtype::F32, |k| k.to_string(), &[]);
        load_err(&p, &[key, what]);
    }
    // An integer dtype for a float parameter.
    let mut s = base();
    s.int64_keys.insert("layer1.0.bn1.weight".into());
    let p = t.file("int.safetensors");
    write_as(&p, &s, Dtype::F32, |k| k.to_string(), &[]);
    load_err(&p, &["layer1.0.bn1.weight", "I64"]);
}

#[test]
fn half_bfloat_and_double_inputs_convert() {
    let t = TmpDir::new("dtypes");
    let sd = base();
    for (dtype, tol) in [
        (Dtype::F64, 0.0f32),
        (Dtype::F16, 1.0 / 1024.0),
        (Dtype::BF16, 1.0 / 128.0),
    ] {
        let p = t.file("d.safetensors");
        write_as(&p, &sd, dtype, |k| k.to_string(), &[]);
        let (got, info) = weights::load(&p).unwrap();
        assert_eq!(
            info.converted,
            vec![(format!("{dtype:?}"), 16 * 4 + 22), ("I64".to_string(), 16)],
            "{dtype:?}"
        );
        for (k, want) in &sd.tensors {
            let g = &got.get(k).unwrap().data;
            for (a, b) in g.iter().zip(&want.data) {
                // Relative rounding of the format (plus f16's subnormal floor).
                assert!(
                    (a - b).abs() <= tol * b.abs() + if dtype == Dtype::F16 { 1e-7 } else { 0.0 },
                    "{dtype:?} {k}: {a} vs {b}"
                );
            }
        }
        assert!(got.int64_keys.contains("layer3.1.bn2.num_batches_tracked"));
    }
}

#[test]
fn wrapper_prefixes_are_stripped_and_reported() {
    let t = TmpDir::new("prefix");
    let sd = base();
    let norm = [
        ("0.mean", vec![3], vec![0.5f32; 3]),
        ("0.std", vec![3], vec![0.25f32; 3]),
    ];
    for (prefix, extra, ignored) in [
        ("module.", &[][..], 0),
        ("1.", &norm[..], 2),
        (
            "module.1.",
            &[("module.0.mean", vec![3], vec![0.5f32; 3])][..],
            1,
        ),
    ] {
        let p = t.file("wrapped.safetensors");
        write_as(&p, &sd, Dtype::F32, |k| format!("{prefix}{k}"), extra);
        let (got, info) = weights::load(&p).unwrap();
        assert_eq!(info.stripped_prefix.as_deref(), Some(prefix));
        assert_eq!(info.ignored.len(), ignored, "{prefix}");
        assert!(
            info.notes.iter().any(|n| n.contains(prefix)),
            "{:?}",
            info.notes
        );
        assert_eq!(got, sd, "{prefix}");
    }
    // Normalisation keys next to an unprefixed model are not a wrapper: unexpected.
    let p = t.file("stray.safetensors");
    write_as(&p, &sd, Dtype::F32, |k| k.to_string(), &norm);
    load_err(&p, &["unexpected key", "0.mean"]);
    // Keys of a second model under another prefix.
    let p = t.file("two.safetensors");
    write_as(
        &p,
        &sd,
        Dtype::F32,
        |k| format!("module.{k}"),
        &[("other.conv1.weight", vec![1], vec![0.0])],
    );
    load_err(&p, &["unexpected key", "other.conv1.weight"]);
}

#[test]
fn save_is_atomic_and_reports_bad_paths() {
    let t = TmpDir::new("save");
    let sd = base();
    let p = t.file("out.safetensors");
    std::fs::write(&p, b"old contents").unwrap();
    weights::save(&p, &sd).unwrap();
    assert_eq!(weights::load(&p).unwrap().0, sd);
    let left: Vec<_> = std::fs::read_dir(&t.0).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary file left behind");
    let bad = t.file("no/such/dir/out.safetensors");
    let e = weights::save(&bad, &sd).unwrap_err().to_string();
    assert!(e.contains("no/such/dir"), "{e}");
}
