//! safetensors <-> `StateDict` (PyTorch `state_dict()` names, host f32 tensors).
//!
//! `load` reads F32/F16/BF16/F64 (converted to f32) and I64 (`num_batches_tracked` only), strips
//! wrapper prefixes (`module.` from DataParallel, `1.` from `nn.Sequential(norm, model)`; the
//! wrapper's own normalisation keys are ignored with a note), infers the base width and class count
//! from `conv1.weight` [W,3,3,3] and `linear.weight` [K,8W], and validates the PreActResNet18 key
//! set (spec section 1): every missing, unexpected or mis-shaped key and every NaN/Inf value is an
//! `Error::Weights` naming the file and the key. `save` writes a temporary file next to the target
//! and renames it, so a crash never leaves a half-written file under the final name.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// BatchNorm epsilon of every BN in the model (PyTorch default).
pub const BN_EPS: f32 = 1e-5;

/// One host tensor: shape + row-major f32 data.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor shape {shape:?} vs {} values",
            data.len()
        );
        HostTensor { shape, data }
    }
}

/// Tensors by PyTorch name. Keys in `int64_keys` (e.g. `num_batches_tracked`) are saved as I64.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    pub tensors: BTreeMap<String, HostTensor>,
    pub int64_keys: BTreeSet<String>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors
            .insert(name.into(), HostTensor::new(shape, data));
    }
    /// Insert an integer-valued tensor that is saved as I64.
    pub fn insert_i64(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        let name = name.into();
        self.int64_keys.insert(name.clone());
        self.insert(name, shape, data);
    }
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }
    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        self.tensors.get_mut(name)
    }
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.int64_keys.remove(name);
        self.tensors.remove(name)
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// What `load` found and did.
#[derive(Clone, Debug, Default)]
pub struct LoadInfo {
    pub path: PathBuf,
    /// Base width W (64 in the paper) inferred from `conv1.weight`.
    pub width: usize,
    pub num_classes: usize,
    /// The wrapper prefix stripped from every key (e.g. "module." or "1."), if any.
    pub stripped_prefix: Option<String>,
    /// Keys that were ignored (a wrapper's normalisation layer), with their original names.
    pub ignored: Vec<String>,
    /// Stored dtypes other than F32 and how many tensors had each, e.g. ("F16", 62).
    pub converted: Vec<(String, usize)>,
    /// Human-readable notes (prefix stripped, keys ignored, conversions, defaults filled in).
    pub notes: Vec<String>,
}

fn werr(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Read every tensor of a safetensors file as f32 without any model validation (fixtures, tools).
/// Integer tensors (I64/I32/U8...) are converted too and remembered in `int64_keys` when I64.
pub fn read_tensors(path: &Path) -> Result<(StateDict, Vec<(String, usize)>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        werr(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    let mut sd = StateDict::new();
    let mut converted: BTreeMap<String, usize> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(&view).map_err(|m| werr(path, format!("key '{name}': {m}")))?;
        if view.dtype() != Dtype::F32 {
            *converted.entry(format!("{:?}", view.dtype())).or_default() += 1;
        }
        if view.dtype() == Dtype::I64 {
            sd.int64_keys.insert(name.clone());
        }
        sd.tensors.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((sd, converted.into_iter().collect()))
}

fn to_f32(v: &TensorView) -> std::result::Result<Vec<f32>, String> {
    let b = v.data();
    let n: usize = v.shape().iter().product();
    let size = v.dtype().size();
    if b.len() != n * size {
        return Err(format!(
            "{} data bytes for shape {:?} of {:?}",
            b.len(),
            v.shape(),
            v.dtype()
        ));
    }
    let out = match v.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        d => {
            return Err(format!(
                "unsupported dtype {d:?} (expected F32, F16, BF16, F64, or I64 for counters)"
            ))
        }
    };
    Ok(out)
}

/// The PreActResNet18 state_dict keys and shapes for base width `w` and `k` classes, in PyTorch's
/// registration order (spec section 1).
pub fn expected_keys(w: usize, k: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("conv1.weight".to_string(), vec![w, 3, 3, 3])];
    let bn = |out: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{p}.{s}"), vec![c]));
        }
        out.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    let mut cin = w;
    for (l, cout) in [(1usize, w), (2, 2 * w), (3, 4 * w), (4, 8 * w)] {
        for b in 0..2 {
            let p = format!("layer{l}.{b}");
            let (ci, stride2) = if b == 0 { (cin, l > 1) } else { (cout, false) };
            bn(&mut out, &format!("{p}.bn1"), ci);
            out.push((format!("{p}.conv1.weight"), vec![cout, ci, 3, 3]));
            bn(&mut out, &format!("{p}.bn2"), cout);
            out.push((format!("{p}.conv2.weight"), vec![cout, cout, 3, 3]));
            if stride2 {
                out.push((format!("{p}.shortcut.0.weight"), vec![cout, ci, 1, 1]));
            }
        }
        cin = cout;
    }
    out.push(("linear.weight".to_string(), vec![k, 8 * w]));
    out.push(("linear.bias".to_string(), vec![k]));
    out
}

/// Find the wrapper prefix: the `P` such that `P + "conv1.weight"` is the stem (not inside a layer).
fn find_prefix(sd: &StateDict, path: &Path) -> Result<String> {
    let mut cands: Vec<String> = sd
        .keys()
        .filter_map(|k| k.strip_suffix("conv1.weight"))
        .filter(|p| !p.contains("layer") && (p.is_empty() || p.ends_with('.')))
        .filter(|p| sd.get(&format!("{p}linear.weight")).is_some())
        .map(str::to_string)
        .collect();
    cands.sort_by_key(|p| p.len());
    match cands.len() {
        0 => Err(werr(
            path,
            "missing key 'conv1.weight' (or 'linear.weight'): not a PreActResNet18 state_dict \
             (looked for conv1.weight and linear.weight under any wrapper prefix)",
        )),
        1 => Ok(cands.remove(0)),
        _ => Err(werr(
            path,
            format!("ambiguous: several models in one file (prefixes {cands:?})"),
        )),
    }
}

/// Is `key` (not under `prefix`) part of the wrapper around the model, e.g. the normalisation layer
/// `0.` of `nn.Sequential(norm, model)` or `module.0.` of a DataParallel-wrapped one?
fn is_wrapper_sibling(prefix: &str, key: &str) -> bool {
    let Some(inner) = prefix.strip_suffix('.') else {
        return false;
    };
    let (parent, last) = match inner.rfind('.') {
        Some(i) => (&inner[..=i], &inner[i + 1..]),
        None => ("", inner),
    };
    if last.parse::<usize>().is_err() {
        return false;
    }
    match key.strip_prefix(parent) {
        Some(rest) => {
            let seg = rest.split('.').next().unwrap_or("");
            seg != last && seg.parse::<usize>().is_ok() && rest.len() > seg.len()
        }
        None => false,
    }
}

/// Load a PreActResNet18 state_dict from a safetensors file (see module docs).
pub fn load(path: impl AsRef<Path>) -> Result<(StateDict, LoadInfo)> {
    let path = path.as_ref();
    let (raw, converted) = read_tensors(path)?;
    let mut info = LoadInfo {
        path: path.to_path_buf(),
        converted: converted.clone(),
        ..Default::default()
    };
    for (d, n) in &converted {
        if d != "I64" {
            info.notes
                .push(format!("converted {n} {d} tensor(s) to f32"));
        }
    }
    let prefix = find_prefix(&raw, path)?;
    let mut sd = StateDict::new();
    for (k, t) in raw.tensors {
        let is_i64 = raw.int64_keys.contains(&k);
        match k.strip_prefix(prefix.as_str()) {
            Some(name) => {
                if is_i64 && !name.ends_with("num_batches_tracked") {
                    return Err(werr(
                        path,
                        format!("key '{k}': integer dtype I64 for a floating-point parameter"),
                    ));
                }
                if is_i64 || name.ends_with("num_batches_tracked") {
                    sd.int64_keys.insert(name.to_string());
                }
                sd.tensors.insert(name.to_string(), t);
            }
            None if is_wrapper_sibling(&prefix, &k) => info.ignored.push(k),
            None => {
                return Err(werr(
                    path,
                    format!("unexpected key '{k}' (outside the model's prefix '{prefix}')"),
                ))
            }
        }
    }
    if !prefix.is_empty() {
        info.notes
            .push(format!("stripped wrapper prefix '{prefix}' from every key"));
        info.stripped_prefix = Some(prefix);
    }
    if !info.ignored.is_empty() {
        info.notes.push(format!(
            "ignored {} key(s) of the wrapper's normalisation layer ({}): the engine normalises with the dataset's mean/std table",
            info.ignored.len(),
            info.ignored.join(", ")
        ));
    }
    let (w, k) = infer_dims(&sd, path)?;
    info.width = w;
    info.num_classes = k;
    let filled = validate(&mut sd, path, w, k)?;
    if filled > 0 {
        info.notes.push(format!(
            "{filled} missing num_batches_tracked counter(s) set to 0"
        ));
    }
    Ok((sd, info))
}

/// Base width and class count from `conv1.weight` [W,3,3,3] and `linear.weight` [K,8W].
pub fn infer_dims(sd: &StateDict, path: &Path) -> Result<(usize, usize)> {
    let c1 = sd
        .get("conv1.weight")
        .ok_or_else(|| werr(path, "missing key 'conv1.weight'"))?;
    let w = match c1.shape.as_slice() {
        [w, 3, 3, 3] if *w > 0 => *w,
        s => {
            return Err(werr(
                path,
                format!("key 'conv1.weight': shape {s:?}, expected [W, 3, 3, 3]"),
            ))
        }
    };
    let lin = sd
        .get("linear.weight")
        .ok_or_else(|| werr(path, "missing key 'linear.weight'"))?;
    let k = match lin.shape.as_slice() {
        [k, f] if *f == 8 * w && *k > 0 => *k,
        s => {
            return Err(werr(
                path,
                format!(
                    "key 'linear.weight': shape {s:?}, expected [K, {}] for base width {w}",
                    8 * w
                ),
            ))
        }
    };
    Ok((w, k))
}

/// Check `sd` against the PreActResNet18 key set for width `w` and `k` classes: missing,
/// unexpected and mis-shaped keys, non-finite values, negative running variances. A missing
/// `num_batches_tracked` (unused by the computation) is filled with 0; returns how many were.
pub fn validate(sd: &mut StateDict, path: &Path, w: usize, k: usize) -> Result<usize> {
    let expected = expected_keys(w, k);
    let names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(u) = sd.keys().find(|n| !names.contains(n.as_str())) {
        return Err(werr(
            path,
            format!(
                "unexpected key '{u}' (not in PreActResNet18 with base width {w} and {k} classes)"
            ),
        ));
    }
    let mut filled = 0;
    for (name, shape) in &expected {
        let Some(t) = sd.get(name) else {
            if name.ends_with("num_batches_tracked") {
                sd.insert_i64(name.clone(), vec![], vec![0.0]);
                filled += 1;
                continue;
            }
            return Err(werr(
                path,
                format!("missing key '{name}' (expected shape {shape:?})"),
            ));
        };
        let ok = if shape.is_empty() {
            t.data.len() == 1
        } else {
            &t.shape == shape
        };
        if !ok {
            return Err(werr(
                path,
                format!(
                    "key '{name}': shape {:?}, expected {shape:?} (base width {w}, {k} classes)",
                    t.shape
                ),
            ));
        }
        if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(werr(
                path,
                format!("key '{name}': non-finite value {v} at flat index {i}"),
            ));
        }
        if name.ends_with("running_var") {
            if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| **v < 0.0) {
                return Err(werr(
                    path,
                    format!("key '{name}': negative running variance {v} at index {i}"),
                ));
            }
        }
    }
    Ok(filled)
}

/// Serialise to safetensors bytes (F32, I64 for `int64_keys`).
pub fn to_bytes(sd: &StateDict) -> Result<Vec<u8>> {
    to_bytes_with_metadata(sd, None)
}

/// `to_bytes` with a safetensors `__metadata__` map (training checkpoints keep their state there).
pub fn to_bytes_with_metadata(
    sd: &StateDict,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(sd.len());
    for (name, t) in &sd.tensors {
        let (dtype, bytes) = if sd.int64_keys.contains(name) {
            (
                Dtype::I64,
                t.data
                    .iter()
                    .flat_map(|v| (v.round() as i64).to_le_bytes())
                    .collect(),
            )
        } else {
            (
                Dtype::F32,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        bufs.push((name.clone(), dtype, t.shape.clone(), bytes));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Msg(format!("safetensors: tensor '{n}': {e:?}")))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, &metadata)
        .map_err(|e| Error::Msg(format!("safetensors serialise: {e:?}")))
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fname = path.file_name().ok_or_else(|| Error::File {
        path: path.into(),
        msg: "not a file name".into(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        fname.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Save a state_dict as safetensors (temporary file + rename).
pub fn save(path: impl AsRef<Path>, sd: &StateDict) -> Result<()> {
    write_atomic(path.as_ref(), &to_bytes(sd)?)
}
