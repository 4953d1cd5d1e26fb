//! `fmp-engine finetune WEIGHTS --data DIR --out OUT`: spec section 5 on a class-balanced clean subset.
use std::path::PathBuf;

use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::finetune::{finetune, FinetuneOptions};
use fmp_engine::fmp::pipeline::{find_data, load_clean, load_model};
use fmp_engine::fmp::prune::PruneMask;
use fmp_engine::fmp::train::{EpochStats, SgdOptions};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::common::{DeviceArgs, JsonOut};

/// Fine-tuning settings shared by `finetune`, `defend` and `demo`.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct FinetuneArgs {
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Fraction of the training set used, class-balanced (paper 0.10; the reference code used 0.05).
    #[arg(long, default_value_t = 0.1)]
    pub ratio: f32,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Cosine annealing floor.
    #[arg(long, default_value_t = 1e-4)]
    pub eta_min: f32,
    /// Seed of the subset, the batch order and the augmentation.
    #[arg(long = "ft-seed", default_value_t = 0)]
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
    /// Dataset folder [default: $FMP_DATA, ../shared/data, the engine's cache].
    #[arg(long)]
    pub data: Option<PathBuf>,
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
    /// Print one JSON object on stdout (progress text goes to stderr); fields in docs/report.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let json = JsonOut::begin(a.json)?;
    let backend = a.device.backend()?;
    let dir = find_data(a.data.as_deref())?;
    let (clean, kind) = load_clean(&dir)?;
    let mut model = load_model(backend, &a.weights, kind)?;
    let mut mask = None;
    if !a.no_mask {
        let sidecar = PruneMask::sidecar(&a.weights);
        let path = a
            .mask
            .clone()
            .or_else(|| sidecar.is_file().then_some(sidecar));
        if let Some(p) = path {
            let pairs = PruneMask::load(&p)?.pairs(&model, &p)?;
            model.set_masks(&pairs)?;
            println!(
                "keeping {} pruned filters at zero ({})",
                pairs.len(),
                p.display()
            );
            mask = Some((p.display().to_string(), pairs.len()));
        }
    }
    let epochs = run_finetune(&mut model, &clean, &a.ft, kind)?;
    model.save(&a.out)?;
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

pub fn run_finetune(
    model: &mut PreActResNet18,
    clean: &LabeledImages,
    ft: &FinetuneArgs,
    kind: DatasetKind,
) -> Result<Vec<EpochStats>> {
    let opts = ft.options(kind);
    let n = fmp_engine::fmp::finetune::subset(clean, opts.ratio, opts.sgd.seed)?.len();
    println!(
        "fine-tuning on {n} clean images ({} per class), {} epochs",
        n / clean.num_classes.max(1),
        opts.sgd.epochs
    );
    finetune(model, clean, &opts, &mut |s| {
        println!(
            "  epoch {:>3}  lr {:.5}  loss {:.4}  train acc {:.3}  {:.1} s",
            s.epoch, s.lr, s.loss, s.train_acc, s.seconds
        )
    })
}
