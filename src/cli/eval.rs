//! `fmp-engine eval`: clean top-1 accuracy of a model on a dataset's test split.
use std::path::PathBuf;
use std::time::Instant;

use fmp_engine::data::{self, DatasetKind, Split};
use fmp_engine::fmp::attacks::{poisoned_test_set, Attack, AttackKind};
use fmp_engine::model::{predict, PreActResNet18};
use fmp_engine::{Error, Result};

use super::check::{int_in, MAX_BATCH, MAX_CLASS, MAX_IMAGES};
use super::common::{DataArgs, DeviceArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors with PyTorch state_dict names).
    pub weights: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Dataset kind: auto (from the files), cifar10, cifar100, gtsrb.
    #[arg(long, default_value = "auto")]
    pub dataset: String,
    /// Evaluate only the first N test images.
    #[arg(long, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_BATCH))]
    pub batch: usize,
    /// Also measure ASR and RA (spec section 6) under this attack: badnets, blended, lowfreq, wanet.
    #[arg(long)]
    pub attack: Option<AttackKind>,
    /// The attack's target class.
    #[arg(long, default_value_t = 0, value_parser = int_in::<u32>(0, MAX_CLASS))]
    pub target: u32,
    /// Print one JSON object (acc, n, correct, ...) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    super::check::input_file(&args.weights, "WEIGHTS")?;
    let dir = args.data.dir()?;
    let kind = match args.dataset.as_str() {
        "auto" => None,
        s => Some(s.parse::<DatasetKind>()?),
    };
    let kind = match kind {
        Some(k) => k,
        None => data::detect(&dir)?,
    };
    let mut ds = data::load_split(&dir, Some(kind), Split::Test)?;
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
    if args.attack.is_some() && args.target as usize >= info.num_classes {
        return Err(Error::InvalidArgument(format!(
            "--target {} out of range 0..{} (the model's classes)",
            args.target, info.num_classes
        )));
    }
    let t0 = Instant::now();
    let preds = predict(&model, &ds, args.batch)?;
    let secs = t0.elapsed().as_secs_f64();
    let correct = preds.iter().zip(&ds.labels).filter(|(p, l)| p == l).count();
    let n = ds.len();
    let acc = correct as f64 / n as f64;
    // ASR / RA: every test image whose label != target, trigger applied.
    let mut attack_metrics = None;
    if let Some(kind) = args.attack {
        let attack = Attack::new(kind, args.target);
        let (img, lab) = poisoned_test_set(&ds.images, &ds.labels, &attack);
        let pred = fmp_engine::fmp::metrics::predict(&model, &img, args.batch)?;
        let np = lab.len().max(1) as f64;
        let asr = pred.iter().filter(|&&p| p == args.target).count() as f64 / np;
        let ra = pred.iter().zip(&lab).filter(|(p, y)| p == y).count() as f64 / np;
        attack_metrics = Some((kind, asr, ra, lab.len()));
    }
    if args.json {
        let mut j = serde_json::json!({
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
        if let Some((kind, asr, ra, np)) = attack_metrics {
            j["attack"] = kind.name().into();
            j["target"] = args.target.into();
            j["asr"] = asr.into();
            j["ra"] = ra.into();
            j["n_poisoned"] = np.into();
        }
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
        if let Some((kind, asr, ra, np)) = attack_metrics {
            println!(
                "{kind} (target {}): ASR {:.2}%, RA {:.2}% on {np} poisoned test images",
                args.target,
                100.0 * asr,
                100.0 * ra
            );
        }
    }
    Ok(())
}
