//! `fmp-engine eval`: clean top-1 accuracy of a model on a dataset's test split.
use std::path::PathBuf;
use std::time::Instant;

use fmp_engine::data::{self, DatasetKind, Split};
use fmp_engine::model::{predict, PreActResNet18};
use fmp_engine::{Error, Result};

use super::common::DeviceArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors with PyTorch state_dict names).
    pub weights: PathBuf,
    /// Dataset directory (CIFAR-10/CIFAR-100/GTSRB binary files).
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset kind: auto (from the files), cifar10, cifar100, gtsrb.
    #[arg(long, default_value = "auto")]
    pub dataset: String,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Print one JSON object (acc, n, correct, ...) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let kind = match args.dataset.as_str() {
        "auto" => None,
        s => Some(s.parse::<DatasetKind>()?),
    };
    let kind = match kind {
        Some(k) => k,
        None => data::detect(&args.data)?,
    };
    let mut ds = data::load_split(&args.data, Some(kind), Split::Test)?;
    if let Some(n) = args.limit {
        ds.truncate(n);
    }
    if ds.is_empty() {
        return Err(Error::InvalidArgument(
            "no test images to evaluate (--limit 0?)".into(),
        ));
    }
    let backend = args.device.backend()?;
    let (model, info) = PreActResNet18::load(backend.clone(), &args.weights, kind)?;
    for note in &info.notes {
        eprintln!("fmp-engine: {}: {note}", args.weights.display());
    }
    if info.num_classes != kind.num_classes() {
        return Err(Error::InvalidArgument(format!(
            "{} has {} classes but {} has {}",
            args.weights.display(),
            info.num_classes,
            kind.name(),
            kind.num_classes()
        )));
    }
    let t0 = Instant::now();
    let preds = predict(&model, &ds, args.batch)?;
    let secs = t0.elapsed().as_secs_f64();
    let correct = preds.iter().zip(&ds.labels).filter(|(p, l)| p == l).count();
    let n = ds.len();
    let acc = correct as f64 / n as f64;
    if args.json {
        let j = serde_json::json!({
            "acc": acc,
            "n": n,
            "correct": correct,
            "dataset": kind.name(),
            "weights": args.weights.display().to_string(),
            "width": info.width,
            "num_classes": info.num_classes,
            "device": backend.name(),
            "seconds": secs,
        });
        println!("{j}");
    } else {
        println!(
            "{}: clean top-1 accuracy {:.2}% ({correct}/{n}) on {} test images [width {}, {}; {:.1}s, {:.0} img/s]",
            args.weights.display(),
            100.0 * acc,
            kind.name(),
            info.width,
            backend.name(),
            secs,
            n as f64 / secs
        );
    }
    Ok(())
}
