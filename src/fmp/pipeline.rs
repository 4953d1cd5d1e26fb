//! Glue shared by the FMP subcommands: finding the data (`--data`, `FMP_DATA`, `../shared/data` relative to
//! the working directory, the engine's data cache), loading a model with the dataset's normalisation,
//! choosing the scan images, evaluation, and the terminal progress bar.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use super::download;
use super::metrics::Classifier;
use super::rng::Rng;
use super::LabeledImages;
use crate::backend::Backend;
use crate::data::{self, DatasetKind, Split};
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

impl From<data::Dataset> for LabeledImages {
    fn from(d: data::Dataset) -> Self {
        LabeledImages {
            pixels: d.images,
            labels: d.labels,
            num_classes: d.num_classes,
        }
    }
}

impl Classifier for PreActResNet18 {
    fn num_classes(&self) -> usize {
        self.config().num_classes
    }
    fn logits(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let be = self.backend();
        let t = be.from_host(x, &[n, 3, 32, 32])?;
        be.to_host(&self.forward(&t)?)
    }
}

/// Images per evaluation batch on this backend.
pub fn eval_batch(backend: &dyn Backend) -> usize {
    if backend.is_gpu() {
        1024
    } else {
        256
    }
}

/// The engine's data cache: `$FMP_CACHE`, else `$XDG_CACHE_HOME/fmp-engine`, else `~/.cache/fmp-engine`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FMP_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("fmp-engine");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("fmp-engine")
}

/// Where `fmp-engine data cifar10` puts CIFAR-10 (the official archive's folder name).
pub fn cifar10_cache_dir() -> PathBuf {
    cache_dir().join("cifar-10-batches-bin")
}

/// `dir` itself when it holds a dataset, else its `cifar10` / `cifar-10-batches-bin` subfolder.
fn dataset_in(dir: &Path) -> Option<PathBuf> {
    if data::detect(dir).is_ok() {
        return Some(dir.to_path_buf());
    }
    ["cifar10", "cifar-10-batches-bin"]
        .iter()
        .map(|s| dir.join(s))
        .find(|d| data::detect(d).is_ok())
}

/// The dataset folder: `--data` (must hold a dataset), else `$FMP_DATA`, `../shared/data` relative to the
/// working directory, the cache.
pub fn find_data(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return dataset_in(d).ok_or_else(|| {
            let why = data::detect(d)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            Error::Data {
                path: d.into(),
                msg: format!("no dataset here or in its cifar10/ subfolder ({why})"),
            }
        });
    }
    let mut cands = Vec::new();
    if let Some(p) = std::env::var_os("FMP_DATA") {
        cands.push(PathBuf::from(p));
    }
    cands.push(PathBuf::from("../shared/data"));
    cands.push(cache_dir());
    if let Some(d) = cands.iter().find_map(|d| dataset_in(d)) {
        return Ok(d);
    }
    fetch_missing_cifar10()
}

/// No dataset anywhere: download CIFAR-10 into the cache (progress on stderr, MD5 checked) and return its
/// folder, or, offline, an error saying how to point at a local copy.
fn fetch_missing_cifar10() -> Result<PathBuf> {
    let cache = cache_dir();
    if download::offline() {
        return Err(Error::Msg(format!(
            "no CIFAR-10 data found (looked at --data, $FMP_DATA, ./../shared/data and the cache {}).\n{}",
            cifar10_cache_dir().display(),
            download::offline_help()
        )));
    }
    let (url, md5) = download::cifar10_source();
    eprintln!(
        "fmp-engine: no dataset found (--data, $FMP_DATA, ./../shared/data, {}); downloading CIFAR-10 (163 MB) from {url} \
         (--offline or FMP_OFFLINE=1 to refuse)",
        cache.display()
    );
    let dir = download::fetch_cifar10_with_progress(&url, &md5, &cache, None).map_err(|e| {
        Error::Msg(format!(
            "no dataset found, and downloading CIFAR-10 into {} failed: {e}",
            cache.display()
        ))
    })?;
    eprintln!(
        "fmp-engine: CIFAR-10 ready (MD5 verified): {}",
        dir.display()
    );
    Ok(dir)
}

/// Load a split; the kind is detected from the files.
pub fn load_split(dir: &Path, split: Split) -> Result<(LabeledImages, DatasetKind)> {
    let kind = data::detect(dir)?;
    Ok((data::load_split(dir, Some(kind), split)?.into(), kind))
}

/// The clean data a defender holds: the training split when present, else the test split (with a warning).
pub fn load_clean(dir: &Path) -> Result<(LabeledImages, DatasetKind)> {
    let kind = data::detect(dir)?;
    if data::split_files(dir, kind, Split::Train).is_empty() {
        eprintln!(
            "fmp-engine: {} has no training split; using its test split as clean data",
            dir.display()
        );
        return load_split(dir, Split::Test);
    }
    load_split(dir, Split::Train)
}

/// Load weights with `kind`'s normalisation and check the class count against the dataset's.
pub fn load_model(
    backend: Arc<dyn Backend>,
    weights: &Path,
    kind: DatasetKind,
) -> Result<PreActResNet18> {
    let (model, _info) = PreActResNet18::load(backend, weights, kind)?;
    if model.config().num_classes != kind.num_classes() {
        return Err(Error::Weights {
            path: weights.into(),
            msg: format!(
                "the model has {} classes but the dataset ({}) has {}: pass --data with the dataset it was trained on",
                model.config().num_classes,
                kind.name(),
                kind.num_classes()
            ),
        });
    }
    Ok(model)
}

/// `n` scan images from the defender's clean data: a seeded shuffle (`Rng::derive(seed, "scan-samples")`)
/// of all indices, first n. Returns pixel-space images and labels.
pub fn scan_samples(clean: &LabeledImages, n: usize, seed: u64) -> Result<(Vec<f32>, Vec<u32>)> {
    if n == 0 || n > clean.len() {
        return Err(Error::InvalidArgument(format!(
            "--samples {n}: must be between 1 and {} (images available)",
            clean.len()
        )));
    }
    let mut idx: Vec<usize> = (0..clean.len()).collect();
    Rng::derive(seed, "scan-samples").shuffle(&mut idx);
    idx.truncate(n);
    let s = clean.subset(&idx);
    Ok((super::u8_to_pixels(&s.pixels), s.labels))
}

/// A progress bar with ETA on a terminal; hidden otherwise.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
