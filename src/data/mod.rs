//! Image datasets in the CIFAR binary record layout, held as raw u8 (N x 3072, CHW planes).
//!
//! - CIFAR-10: `data_batch_{1..5}.bin`, `test_batch.bin`; record = 1 label byte + 3072 pixels.
//! - CIFAR-100: `train.bin`, `test.bin` (or the `test_sample20.bin` sample); record = coarse
//!   label byte + fine label byte + 3072 pixels; the fine label is used.
//! - GTSRB (32x32, 43 classes): `train_10k.bin`/`test_5k.bin` (or `train.bin`/`test.bin`), the
//!   CIFAR-10 record layout.
//! Images stay u8 until a batch is built (`batch_f32`: pixel space [0,1], [n,3,32,32]); the
//! model normalises internally. A file whose size is not a whole number of records, or a label
//! out of range, is an `Error::Data` naming the file and the record.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const IMAGE_BYTES: usize = 3 * 32 * 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    Cifar10,
    Cifar100,
    Gtsrb,
}

impl DatasetKind {
    pub fn num_classes(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 10,
            DatasetKind::Cifar100 => 100,
            DatasetKind::Gtsrb => 43,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Gtsrb => "gtsrb",
        }
    }
    /// Label bytes before the pixels of each record.
    pub fn label_bytes(self) -> usize {
        match self {
            DatasetKind::Cifar100 => 2,
            _ => 1,
        }
    }
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }
    /// Per-channel (mean, std) of the model's input normalisation (spec section 1).
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            DatasetKind::Cifar10 => ([0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]),
            DatasetKind::Cifar100 => ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
            DatasetKind::Gtsrb => ([0.0; 3], [1.0; 3]),
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "cifar10" => Ok(DatasetKind::Cifar10),
            "cifar100" => Ok(DatasetKind::Cifar100),
            "gtsrb" => Ok(DatasetKind::Gtsrb),
            _ => Err(Error::InvalidArgument(format!(
                "unknown dataset '{s}': expected cifar10, cifar100 or gtsrb"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images (u8, N x 3072, CHW planes of 32x32) and labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub num_classes: usize,
    pub name: String,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }
    pub fn image_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }
    /// Pixel-space batch in [0,1], layout [n,3,32,32], of the images at `indices`.
    pub fn batch_f32(&self, indices: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        for &i in indices {
            out.extend(self.image(i).iter().map(|&p| p as f32 / 255.0));
        }
        out
    }
    /// Pixel-space batch of the contiguous range `start..start+n`.
    pub fn range_f32(&self, start: usize, n: usize) -> Vec<f32> {
        self.images[start * IMAGE_BYTES..(start + n) * IMAGE_BYTES]
            .iter()
            .map(|&p| p as f32 / 255.0)
            .collect()
    }
    pub fn labels_of(&self, indices: &[usize]) -> Vec<u32> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }
    /// A new dataset of the images at `indices` (in that order).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: self.labels_of(indices),
            num_classes: self.num_classes,
            name: self.name.clone(),
        }
    }
    /// Keep the first `n` records.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * IMAGE_BYTES);
        }
    }
    fn append(&mut self, other: Dataset) {
        self.images.extend(other.images);
        self.labels.extend(other.labels);
    }
}

fn derr(path: &Path, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Parse one binary file of `kind` records.
pub fn parse_records(path: &Path, bytes: &[u8], kind: DatasetKind) -> Result<Dataset> {
    let rb = kind.record_bytes();
    if bytes.is_empty() {
        return Err(derr(path, "empty file"));
    }
    if bytes.len() % rb != 0 {
        return Err(derr(
            path,
            format!(
                "size {} bytes is not a whole number of {}-byte {} records (record {} is truncated)",
                bytes.len(),
                rb,
                kind.name(),
                bytes.len() / rb
            ),
        ));
    }
    let n = bytes.len() / rb;
    let k = kind.num_classes();
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(rb).enumerate() {
        if kind == DatasetKind::Cifar100 && rec[0] >= 20 {
            return Err(derr(
                path,
                format!("record {i}: coarse label {} out of range 0..20", rec[0]),
            ));
        }
        let label = rec[kind.label_bytes() - 1] as usize;
        if label >= k {
            return Err(derr(
                path,
                format!(
                    "record {i}: label {label} out of range 0..{k} for {}",
                    kind.name()
                ),
            ));
        }
        labels.push(label as u32);
        images.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(Dataset {
        images,
        labels,
        num_classes: k,
        name: kind.name().to_string(),
    })
}

/// Read one binary file of `kind` records.
pub fn read_file(path: &Path, kind: DatasetKind) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_records(path, &bytes, kind)
}

fn existing(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect()
}

/// The dataset kind stored in `dir`, from its file names (and record sizes where names are shared).
pub fn detect(dir: &Path) -> Result<DatasetKind> {
    if !dir.is_dir() {
        return Err(derr(dir, "not a directory"));
    }
    let has = |n: &str| dir.join(n).is_file();
    if has("test_sample20.bin") || has("fine_label_names.txt") || has("coarse_label_names.txt") {
        return Ok(DatasetKind::Cifar100);
    }
    if has("train_10k.bin") || has("test_5k.bin") || has("signnames.txt") {
        return Ok(DatasetKind::Gtsrb);
    }
    if has("test_batch.bin") || (1..=5).any(|i| has(&format!("data_batch_{i}.bin"))) {
        return Ok(DatasetKind::Cifar10);
    }
    // train.bin/test.bin: CIFAR-100 (3074-byte records) or GTSRB (3073-byte records).
    let files = existing(dir, &["test.bin", "train.bin"]);
    if let Some(f) = files.first() {
        let len = std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len() as usize;
        let c100 = len % DatasetKind::Cifar100.record_bytes() == 0;
        let gts = len % DatasetKind::Gtsrb.record_bytes() == 0;
        let hint = dir.to_string_lossy().to_ascii_lowercase();
        return match (c100, gts) {
            (true, false) => Ok(DatasetKind::Cifar100),
            (false, true) => Ok(DatasetKind::Gtsrb),
            (true, true) if hint.contains("gtsrb") => Ok(DatasetKind::Gtsrb),
            (true, true) if hint.contains("cifar100") => Ok(DatasetKind::Cifar100),
            _ => Err(derr(
                f,
                "cannot tell CIFAR-100 (3074-byte records) from GTSRB (3073): pass --dataset",
            )),
        };
    }
    Err(derr(
        dir,
        "no dataset found: expected CIFAR-10 (data_batch_*.bin, test_batch.bin), CIFAR-100 (train.bin, test.bin) \
         or GTSRB (train_10k.bin, test_5k.bin) files",
    ))
}

/// The files holding `split` of a `kind` dataset in `dir` (in reading order).
pub fn split_files(dir: &Path, kind: DatasetKind, split: Split) -> Vec<PathBuf> {
    match (kind, split) {
        (DatasetKind::Cifar10, Split::Train) => existing(
            dir,
            &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
        ),
        (DatasetKind::Cifar10, Split::Test) => existing(dir, &["test_batch.bin"]),
        (DatasetKind::Cifar100, Split::Train) => existing(dir, &["train.bin"]),
        (DatasetKind::Cifar100, Split::Test) => {
            let f = existing(dir, &["test.bin"]);
            if f.is_empty() {
                existing(dir, &["test_sample20.bin"])
            } else {
                f
            }
        }
        (DatasetKind::Gtsrb, Split::Train) => first_of(dir, &["train.bin", "train_10k.bin"]),
        (DatasetKind::Gtsrb, Split::Test) => first_of(dir, &["test.bin", "test_5k.bin"]),
    }
}

fn first_of(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    existing(dir, names).into_iter().take(1).collect()
}

/// Load `split` from `dir`; `kind` None detects it from the files.
pub fn load_split(dir: &Path, kind: Option<DatasetKind>, split: Split) -> Result<Dataset> {
    let kind = match kind {
        Some(k) => k,
        None => detect(dir)?,
    };
    let files = split_files(dir, kind, split);
    if files.is_empty() {
        return Err(derr(
            dir,
            format!(
                "no {split:?} split of {} found in this directory",
                kind.name()
            ),
        ));
    }
    let mut ds: Option<Dataset> = None;
    for f in files {
        let part = read_file(&f, kind)?;
        match ds.as_mut() {
            Some(d) => d.append(part),
            None => ds = Some(part),
        }
    }
    Ok(ds.expect("at least one file"))
}

/// The data root for tests and demos: `$FMP_DATA`, else `../shared/data` next to the crate root.
pub fn data_root() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FMP_DATA") {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    p.is_dir().then_some(p)
}
