//! `fmp-engine train --data DIR --attack badnets|blended|lowfreq|wanet|none --out MODEL`: BackdoorBench-style
//! training (spec section 7), then Acc/ASR/RA on the test split.
use std::path::PathBuf;

use fmp_engine::data::{DatasetKind, Split};
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::checkpoint::{checkpoint_path, data_md5, open_for_resume, sgd_identity};
use fmp_engine::fmp::metrics::evaluate;
use fmp_engine::fmp::pipeline::{eval_batch, load_split};
use fmp_engine::fmp::train::{train_backdoored, BackdoorOptions, EpochStats};
use fmp_engine::model::{ModelConfig, PreActResNet18};
use fmp_engine::{Error, Result};

use super::check::{
    int_in, real_in, seed, MAX_BATCH, MAX_CLASS, MAX_EPOCHS, MAX_IMAGES, MAX_WIDTH,
};
use super::common::{DataArgs, JsonDeviceArgs, JsonOut};
use super::defend::print_metrics_table;

/// `none` or an attack name.
#[derive(Clone, Copy, Debug)]
pub struct AttackOrNone(pub Option<AttackKind>);

impl std::str::FromStr for AttackOrNone {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("clean") {
            return Ok(AttackOrNone(None));
        }
        s.parse::<AttackKind>()
            .map(|k| AttackOrNone(Some(k)))
            .map_err(|_| {
                Error::InvalidArgument(format!(
                    "unknown attack '{s}': expected badnets, blended, lowfreq, wanet or none"
                ))
            })
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// badnets, blended, lowfreq, wanet or none.
    #[arg(long)]
    pub attack: AttackOrNone,
    /// Trained weights (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Base width (64 is the paper's PreActResNet18).
    #[arg(long, default_value_t = 64, value_parser = int_in::<usize>(1, MAX_WIDTH))]
    pub width: usize,
    #[arg(long, default_value_t = 100, value_parser = int_in::<usize>(1, MAX_EPOCHS))]
    pub epochs: usize,
    /// Fraction of the training images poisoned, in [0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = real_in(0.0, false, 1.0, false))]
    pub poison_rate: f32,
    /// Target class of the backdoor (below the dataset's class count).
    #[arg(long, default_value_t = 0, value_parser = int_in::<u32>(0, MAX_CLASS))]
    pub target: u32,
    /// Seed of the initial weights, the poisoned subset, batch order and augmentation.
    #[arg(long, default_value_t = 0, value_parser = seed)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.01, value_parser = real_in(0.0, true, 10.0, false))]
    pub lr: f32,
    /// Images per SGD step (at least 2: batch statistics need two).
    #[arg(long, default_value_t = 128, value_parser = int_in::<usize>(2, MAX_BATCH))]
    pub batch: usize,
    #[arg(long, default_value_t = 5e-4, value_parser = real_in(0.0, false, 1.0, true))]
    pub weight_decay: f32,
    /// Skip RandomCrop + flip (CIFAR-10 trains with them by default).
    #[arg(long)]
    pub no_augment: bool,
    /// Train on the first N training images only.
    #[arg(long, value_parser = int_in::<usize>(2, MAX_IMAGES))]
    pub limit: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub eval_limit: Option<usize>,
    /// Continue an interrupted run from its per-epoch checkpoint `<OUT>.ckpt.safetensors` (same data and
    /// settings only); the result is bit-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub common: JsonDeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let lock = super::check::claim_out(&a.out)?;
    let json = JsonOut::begin(a.common.json)?;
    let backend = a.common.device.backend()?;
    let dir = a.data.dir()?;
    let (train, kind) = load_split(&dir, Split::Train)?;
    let train = train.truncate(a.limit.unwrap_or(usize::MAX));
    let cfg = ModelConfig::for_dataset(kind, a.width);
    let attack_kind = a.attack.0;
    let mut opts = BackdoorOptions::backdoorbench(
        attack_kind,
        a.epochs,
        kind == DatasetKind::Cifar10 && !a.no_augment,
    );
    opts.target = a.target;
    opts.poison_rate = a.poison_rate;
    opts.sgd.seed = a.seed;
    opts.sgd.lr = a.lr;
    opts.sgd.batch = a.batch;
    opts.sgd.weight_decay = a.weight_decay;
    println!(
        "training PreActResNet18 width {} on {} {} images, attack {}, {} epochs on {}",
        a.width,
        train.len(),
        kind.name(),
        attack_kind.map(|k| k.name()).unwrap_or("none"),
        a.epochs,
        backend.name()
    );
    let ckpt_path = checkpoint_path(&a.out);
    lock.remove_stale_temps(&[&a.out, &ckpt_path]);
    let mut identity = sgd_identity(&opts.sgd);
    identity.extend([
        ("command".to_string(), "train".to_string()),
        ("data_md5".into(), data_md5(&train)),
        ("width".into(), a.width.to_string()),
        ("num_classes".into(), cfg.num_classes.to_string()),
        (
            "attack".into(),
            attack_kind.map(|k| k.name()).unwrap_or("none").into(),
        ),
        ("target".into(), a.target.to_string()),
        ("poison_rate".into(), a.poison_rate.to_string()),
    ]);
    let (mut model, resume) = match open_for_resume(&ckpt_path, a.resume, &identity, "training")? {
        Some(c) => {
            let m = PreActResNet18::from_state_dict(backend.clone(), &c.weights, cfg)?;
            println!(
                "resuming training from {} after epoch {}/{}",
                ckpt_path.display(),
                c.epoch(),
                a.epochs
            );
            let st = c.loop_state(&m, &ckpt_path)?;
            (m, Some(st))
        }
        None => (
            PreActResNet18::new_random(backend.clone(), cfg, a.seed)?,
            None,
        ),
    };
    let epochs =
        super::interrupt::run_checkpointed(&ckpt_path, &identity, a.epochs, resume, |c| {
            let print = &mut |s: &EpochStats| super::interrupt::print_epoch(s, true);
            train_backdoored(&mut model, &train, &opts, print, Some(c))
        })?;
    model.save(&a.out)?;
    let _ = std::fs::remove_file(&ckpt_path);
    println!("weights: {}", a.out.display());
    let mut metrics = None;
    if let Ok((test, _)) = load_split(&dir, Split::Test) {
        let test = test.truncate(a.eval_limit.unwrap_or(usize::MAX));
        let attack = attack_kind.map(|k| Attack::new(k, a.target));
        let m = evaluate(&model, &test, attack.as_ref(), eval_batch(backend.as_ref()))?;
        print_metrics_table(&[("trained", m)]);
        metrics = Some(m);
    }
    json.emit(&serde_json::json!({
        "out": a.out.display().to_string(),
        "data": dir.display().to_string(),
        "dataset": kind.name(),
        "width": a.width,
        "images": train.len(),
        "attack": attack_kind.map(|k| k.name()),
        "target": a.target,
        "poison_rate": a.poison_rate,
        "seed": a.seed,
        "device": backend.name(),
        "epochs": epochs,
        "metrics": metrics,
    }))
}
