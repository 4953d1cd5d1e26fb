//! Fine-tuning after pruning (spec section 5): a class-balanced clean subset of `floor(N * ratio / K)` images
//! per class (seed 0), SGD lr 0.01, momentum 0.9, weight decay 0, cosine annealing to 1e-4 stepped per
//! epoch, cross-entropy, batch 256, 10 epochs, RandomCrop(32, pad 4) + flip for CIFAR-10. BN running
//! statistics are updated from the fine-tuning batches only (evaluation never runs in train mode).
use super::augment::balanced_subset;
use super::train::{sgd_epochs_resumable, Checkpointing, EpochStats, SgdOptions};
use super::LabeledImages;
use crate::error::{Error, Result};
use crate::model::PreActResNet18;

#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    pub ratio: f32,
    pub sgd: SgdOptions,
}

impl FinetuneOptions {
    pub fn spec(augment: bool) -> Self {
        FinetuneOptions {
            ratio: 0.1,
            sgd: SgdOptions {
                epochs: 10,
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 0.0,
                batch: 256,
                eta_min: 1e-4,
                augment,
                seed: 0,
            },
        }
    }
}

/// The clean fine-tuning subset of `train` (class-balanced, seeded).
pub fn subset(train: &LabeledImages, ratio: f32, seed: u64) -> Result<LabeledImages> {
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "--ratio {ratio} must be in (0, 1]"
        )));
    }
    let idx = balanced_subset(&train.labels, train.num_classes, ratio, seed);
    if idx.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "--ratio {ratio} of {} images over {} classes leaves {} images to fine-tune on",
            train.len(),
            train.num_classes,
            idx.len()
        )));
    }
    Ok(train.subset(&idx))
}

/// Fine-tune `model` (masks set on it stay applied) on the subset of `train`; with `ckpt`,
/// per-epoch checkpoints and resumption.
pub fn finetune(
    model: &mut PreActResNet18,
    train: &LabeledImages,
    opts: &FinetuneOptions,
    on_epoch: &mut dyn FnMut(&EpochStats),
    ckpt: Option<Checkpointing>,
) -> Result<Vec<EpochStats>> {
    let data = subset(train, opts.ratio, opts.sgd.seed)?;
    sgd_epochs_resumable(model, &data, &opts.sgd, None, on_epoch, ckpt)
}
