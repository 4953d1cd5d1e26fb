//! `fmp-engine finetune WEIGHTS --data DIR --out OUT`: spec section 5 on a class-balanced clean subset.
use std::path::PathBuf;

use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::checkpoint::{checkpoint_path, data_md5, open_for_resume, sgd_identity};
use fmp_engine::fmp::download::md5_file;
use fmp_engine::fmp::finetune::{finetune, FinetuneOptions};
use fmp_engine::fmp::prune::PruneMask;
use fmp_engine::fmp::train::{Checkpointing, EpochStats, SgdOptions};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::check::{int_in, real_in, seed, MAX_BATCH, MAX_EPOCHS};
use super::common::{DataArgs, JsonDeviceArgs, Loaded};

/// Fine-tuning settings shared by `finetune`, `defend` and `demo`.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct FinetuneArgs {
    #[arg(long, default_value_t = 10, value_parser = int_in::<usize>(1, MAX_EPOCHS))]
    pub epochs: usize,
    /// Fraction of the training set used, class-balanced (paper 0.10; the reference code used 0.05).
    #[arg(long, default_value_t = 0.1, value_parser = real_in(0.0, true, 1.0, false))]
    pub ratio: f32,
    #[arg(long, default_value_t = 0.01, value_parser = real_in(0.0, true, 10.0, false))]
    pub lr: f32,
    /// Images per SGD step (at least 2: batch statistics need two).
    #[arg(long, default_value_t = 256, value_parser = int_in::<usize>(2, MAX_BATCH))]
    pub batch: usize,
    #[arg(long, default_value_t = 0.9, value_parser = real_in(0.0, false, 1.0, true))]
    pub momentum: f32,
    #[arg(long, default_value_t = 0.0, value_parser = real_in(0.0, false, 1.0, true))]
    pub weight_decay: f32,
    /// Cosine annealing floor.
    #[arg(long, default_value_t = 1e-4, value_parser = real_in(0.0, false, 10.0, false))]
    pub eta_min: f32,
    /// Seed of the subset, the batch order and the augmentation.
    #[arg(long = "ft-seed", default_value_t = 0, value_parser = seed)]
    pub ft_seed: u64,
}

impl FinetuneArgs {
    pub fn options(&self, kind: DatasetKind) -> FinetuneOptions {
        FinetuneOptions {
            ratio: self.ratio,
            sgd: SgdOptions {
                epochs: self.epochs,
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                batch: self.batch,
                eta_min: self.eta_min,
                augment: kind == DatasetKind::Cifar10,
                seed: self.ft_seed,
            },
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model weights (.safetensors), usually pruned.
    pub weights: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Fine-tuned weights.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub ft: FinetuneArgs,
    /// Prune mask to keep at zero [default: `<WEIGHTS>.mask.json` when it exists].
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Ignore any mask sidecar.
    #[arg(long, conflicts_with = "mask")]
    pub no_mask: bool,
    /// Continue an interrupted run from its per-epoch checkpoint `<OUT>.ckpt.safetensors` (same input
    /// weights, mask, data and settings only); the result is bit-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub common: JsonDeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    super::check::input_file(&a.weights, "WEIGHTS")?;
    let lock = super::check::claim_out(&a.out)?;
    if let Some(m) = &a.mask {
        super::check::input_file(m, "--mask")?;
    }
    let (json, loaded) = Loaded::start(a.common.json, &a.common.device, &a.data, &a.weights)?;
    let Loaded {
        backend,
        dir,
        clean,
        kind,
        mut model,
    } = loaded;
    let mut pairs = Vec::new();
    let mut mask_md5 = "-".to_string();
    let mut mask = None;
    if !a.no_mask {
        let sidecar = PruneMask::sidecar(&a.weights);
        let path = a
            .mask
            .clone()
            .or_else(|| sidecar.is_file().then_some(sidecar));
        if let Some(p) = path {
            pairs = PruneMask::load(&p)?.pairs(&model, &p)?;
            mask_md5 = md5_file(&p)?;
            model.set_masks(&pairs)?;
            println!(
                "keeping {} pruned filters at zero ({})",
                pairs.len(),
                p.display()
            );
            mask = Some((p.display().to_string(), pairs.len()));
        }
    }
    let opts = a.ft.options(kind);
    let ckpt_path = checkpoint_path(&a.out);
    lock.remove_stale_temps(&[&a.out, &ckpt_path]);
    let mut identity = sgd_identity(&opts.sgd);
    identity.extend([
        ("command".to_string(), "finetune".to_string()),
        ("weights_md5".into(), md5_file(&a.weights)?),
        ("mask_md5".into(), mask_md5),
        ("data_md5".into(), data_md5(&clean)),
        ("ratio".into(), opts.ratio.to_string()),
    ]);
    let resume = match open_for_resume(&ckpt_path, a.resume, &identity, "fine-tuning")? {
        Some(c) => {
            let cfg = model.config().clone();
            model = PreActResNet18::from_state_dict(backend, &c.weights, cfg)?;
            model.set_masks(&pairs)?;
            println!(
                "resuming fine-tuning from {} after epoch {}/{}",
                ckpt_path.display(),
                c.epoch(),
                opts.sgd.epochs
            );
            Some(c.loop_state(&model, &ckpt_path)?)
        }
        None => None,
    };
    let epochs = opts.sgd.epochs;
    let epochs = super::interrupt::run_checkpointed(&ckpt_path, &identity, epochs, resume, |c| {
        run_finetune(&mut model, &clean, &a.ft, kind, Some(c))
    })?;
    model.save(&a.out)?;
    let _ = std::fs::remove_file(&ckpt_path);
    println!("fine-tuned weights: {}", a.out.display());
    let images = fmp_engine::fmp::finetune::subset(&clean, a.ft.ratio, a.ft.ft_seed)?.len();
    json.emit(&serde_json::json!({
        "weights": a.weights.display().to_string(),
        "out": a.out.display().to_string(),
        "data": dir.display().to_string(),
        "images": images,
        "mask": mask.as_ref().map(|m| &m.0),
        "masked_filters": mask.as_ref().map(|m| m.1).unwrap_or(0),
        "settings": a.ft,
        "epochs": epochs,
    }))
}

/// Fine-tune `model` on the subset `ft` takes of `clean`, printing each epoch (with per-epoch
/// checkpoints when `ckpt` is given).
pub fn run_finetune(
    model: &mut PreActResNet18,
    clean: &LabeledImages,
    ft: &FinetuneArgs,
    kind: DatasetKind,
    ckpt: Option<Checkpointing>,
) -> Result<Vec<EpochStats>> {
    let opts = ft.options(kind);
    let n = fmp_engine::fmp::finetune::subset(clean, opts.ratio, opts.sgd.seed)?.len();
    println!(
        "fine-tuning on {n} clean images ({} per class), {} epochs",
        n / clean.num_classes.max(1),
        opts.sgd.epochs
    );
    finetune(
        model,
        clean,
        &opts,
        &mut |s| super::interrupt::print_epoch(s, true),
        ckpt,
    )
}
