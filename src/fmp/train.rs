//! Training loops on the model's training-mode forward/backward: the shared SGD epoch loop (cosine annealing
//! stepped per epoch, optional CIFAR augmentation, per-batch hook for on-the-fly poisoning), and
//! BackdoorBench-style backdoor training (spec section 7): all-to-one, poison rate 0.1, target 0;
//! BadNets / Blended / Low Frequency poison a fixed seeded subset of non-target images (trigger on the u8
//! image, label set to the target) before training; WaNet poisons every batch: the first `floor(bs * rate)`
//! images are warped and relabelled, the next `floor(bs * rate * 2)` noise-warped with their labels kept.
use std::time::Instant;

use super::attacks::{poison_indices, Attack, AttackKind, IMG, WANET_CROSS_RATIO};
use super::augment::crop_flip;
use super::rng::Rng;
use super::LabeledImages;
use crate::error::{Error, Result};
use crate::model::{PreActResNet18, SgdState};

#[derive(Clone, Debug)]
pub struct SgdOptions {
    pub epochs: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub batch: usize,
    /// Cosine annealing floor.
    pub eta_min: f32,
    /// RandomCrop(32, pad 4) + horizontal flip.
    pub augment: bool,
    pub seed: u64,
}

impl SgdOptions {
    /// The checks the CLI's flag parsers also make, for library callers: at least one epoch, batches of
    /// at least 2, a finite positive rate, momentum in [0, 1), finite non-negative decay and floor.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.epochs == 0 {
            return bad("--epochs 0: must be at least 1".into());
        }
        if self.batch < 2 {
            return bad(format!(
                "--batch {}: must be at least 2 (batch statistics need two images)",
                self.batch
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {}: must be a finite number > 0", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(format!("--momentum {}: must be in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay {}: must be a finite number >= 0",
                self.weight_decay
            ));
        }
        if !(self.eta_min.is_finite() && self.eta_min >= 0.0) {
            return bad(format!(
                "--eta-min {}: must be a finite number >= 0",
                self.eta_min
            ));
        }
        Ok(())
    }
    /// Learning rate of epoch `e` (PyTorch CosineAnnealingLR with T_max = epochs, stepped per epoch).
    pub fn lr_at(&self, e: usize) -> f32 {
        let t = self.epochs.max(1) as f32;
        self.eta_min
            + (self.lr - self.eta_min) * (1.0 + (std::f32::consts::PI * e as f32 / t).cos()) / 2.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f32,
    pub loss: f64,
    pub train_acc: f64,
    pub seconds: f64,
}

/// Called on every batch's u8 images and labels before augmentation (on-the-fly poisoning).
pub type BatchHook<'a> = &'a dyn Fn(&mut [u8], &mut [u32], &mut Rng);

/// The loop's whole state after `epoch` finished epochs: with the model's weights (and BN statistics) it
/// continues training to bit-identical weights (`fmp::checkpoint`).
pub struct LoopState {
    pub epoch: usize,
    /// `Rng::state()` of the loop's generator (batch order, augmentation, on-the-fly poisoning).
    pub rng: u64,
    /// The batch order, shuffled in place every epoch.
    pub order: Vec<usize>,
    pub momentum: SgdState,
    pub stats: Vec<EpochStats>,
}

/// Per-epoch checkpointing of `sgd_epochs_resumable`: `resume` continues from a saved state (the model
/// must already hold that state's weights); `save` is called after every epoch.
pub struct Checkpointing<'a> {
    pub resume: Option<LoopState>,
    pub save: &'a mut dyn FnMut(&PreActResNet18, &LoopState) -> Result<()>,
}

/// Train `model` on `data` with SGD; batches of fewer than 2 images are skipped (batch statistics need two).
pub fn sgd_epochs(
    model: &mut PreActResNet18,
    data: &LabeledImages,
    opts: &SgdOptions,
    hook: Option<BatchHook>,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<Vec<EpochStats>> {
    sgd_epochs_resumable(model, data, opts, hook, on_epoch, None)
}

/// `sgd_epochs` with per-epoch checkpoints and resumption.
pub fn sgd_epochs_resumable(
    model: &mut PreActResNet18,
    data: &LabeledImages,
    opts: &SgdOptions,
    hook: Option<BatchHook>,
    on_epoch: &mut dyn FnMut(&EpochStats),
    mut ckpt: Option<Checkpointing>,
) -> Result<Vec<EpochStats>> {
    opts.validate()?;
    if data.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "training needs at least 2 images, got {}",
            data.len()
        )));
    }
    let be = model.backend().clone();
    let k = model.config().num_classes;
    let mut state = SgdState::new();
    let mut rng = Rng::derive(opts.seed, "sgd-epochs");
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut stats = Vec::new();
    let mut first = 0;
    if let Some(r) = ckpt.as_mut().and_then(|c| c.resume.take()) {
        let mut sorted = r.order.clone();
        sorted.sort_unstable();
        if r.epoch > opts.epochs
            || sorted.len() != data.len()
            || sorted.iter().enumerate().any(|(i, &v)| i != v)
        {
            return Err(Error::InvalidArgument(format!(
                "checkpoint: epoch {} of {} with a batch order over {} images does not fit this run ({} epochs, {} images)",
                r.epoch,
                opts.epochs,
                r.order.len(),
                opts.epochs,
                data.len()
            )));
        }
        first = r.epoch;
        rng = Rng::from_state(r.rng);
        order = r.order;
        state = r.momentum;
        stats = r.stats;
    }
    for e in first..opts.epochs {
        let t0 = Instant::now();
        let lr = opts.lr_at(e);
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for idx in order.chunks(opts.batch.max(2)) {
            let n = idx.len();
            if n < 2 {
                continue;
            }
            let mut imgs = Vec::with_capacity(n * IMG);
            for &i in idx {
                imgs.extend_from_slice(data.image(i));
            }
            let mut labels: Vec<u32> = idx.iter().map(|&i| data.labels[i]).collect();
            if let Some(h) = hook {
                h(&mut imgs, &mut labels, &mut rng);
            }
            let mut x = vec![0f32; n * IMG];
            for j in 0..n {
                let (src, dst) = (
                    &imgs[j * IMG..(j + 1) * IMG],
                    &mut x[j * IMG..(j + 1) * IMG],
                );
                if opts.augment {
                    crop_flip(src, &mut rng, dst);
                } else {
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, &s)| *d = s as f32 / 255.0);
                }
            }
            let xt = be.from_host(&x, &[n, 3, 32, 32])?;
            let (logits, trace) = model.forward_train(&xt)?;
            let y = be.indices_from_host(&labels)?;
            let mut loss = be.zeros(&[n])?;
            let mut dlogits = be.zeros(&[n, k])?;
            be.softmax_cross_entropy(&logits, &y, &mut loss, &mut dlogits)?;
            let grads = model.backward_train(&trace, &dlogits)?;
            model.sgd_step(&grads, &mut state, lr, opts.momentum, opts.weight_decay)?;
            let lh = be.to_host(&loss)?;
            if lh.iter().any(|v| !v.is_finite()) {
                return Err(Error::Msg(format!(
                    "training diverged at epoch {} (non-finite loss); lower --lr",
                    e + 1
                )));
            }
            loss_sum += lh.iter().map(|&v| v as f64).sum::<f64>();
            let lg = be.to_host(&logits)?;
            correct += lg
                .chunks(k)
                .zip(&labels)
                .filter(|(r, &y)| super::metrics::argmax(r) == y)
                .count();
            seen += n;
        }
        let s = EpochStats {
            epoch: e + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_epoch(&s);
        stats.push(s);
        if let Some(c) = ckpt.as_mut() {
            let snap = LoopState {
                epoch: e + 1,
                rng: rng.state(),
                order,
                momentum: state,
                stats,
            };
            (c.save)(model, &snap)?;
            (order, state, stats) = (snap.order, snap.momentum, snap.stats);
        }
    }
    Ok(stats)
}

#[derive(Clone, Debug)]
pub struct BackdoorOptions {
    /// None: a clean model.
    pub attack: Option<AttackKind>,
    pub target: u32,
    pub poison_rate: f32,
    pub sgd: SgdOptions,
}

impl BackdoorOptions {
    /// Section 7 defaults: SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine over `epochs` to 0.
    pub fn backdoorbench(attack: Option<AttackKind>, epochs: usize, augment: bool) -> Self {
        BackdoorOptions {
            attack,
            target: 0,
            poison_rate: 0.1,
            sgd: SgdOptions {
                epochs,
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
                batch: 128,
                eta_min: 0.0,
                augment,
                seed: 0,
            },
        }
    }
}

/// Train `model` (usually fresh from `new_random`) on `data` with the attack's poisoning; with
/// `ckpt`, per-epoch checkpoints and resumption.
pub fn train_backdoored(
    model: &mut PreActResNet18,
    data: &LabeledImages,
    opts: &BackdoorOptions,
    on_epoch: &mut dyn FnMut(&EpochStats),
    ckpt: Option<Checkpointing>,
) -> Result<Vec<EpochStats>> {
    if let Some(&bad) = data
        .labels
        .iter()
        .find(|&&y| y as usize >= model.config().num_classes)
    {
        return Err(Error::InvalidArgument(format!(
            "label {bad} out of range for a {}-class model",
            model.config().num_classes
        )));
    }
    if !(opts.poison_rate.is_finite() && (0.0..=1.0).contains(&opts.poison_rate)) {
        return Err(Error::InvalidArgument(format!(
            "--poison-rate {}: must be in [0, 1]",
            opts.poison_rate
        )));
    }
    opts.sgd.validate()?;
    if opts.target as usize >= model.config().num_classes {
        return Err(Error::InvalidArgument(format!(
            "--target {} out of range 0..{}",
            opts.target,
            model.config().num_classes
        )));
    }
    match opts.attack {
        None => sgd_epochs_resumable(model, data, &opts.sgd, None, on_epoch, ckpt),
        Some(AttackKind::WaNet) => {
            let attack = Attack::new(AttackKind::WaNet, opts.target);
            let rate = opts.poison_rate;
            let hook = move |imgs: &mut [u8], labels: &mut [u32], rng: &mut Rng| {
                let n = labels.len();
                let num_bd = (n as f32 * rate) as usize;
                let num_cross = ((num_bd as f32 * WANET_CROSS_RATIO) as usize).min(n - num_bd);
                let mut buf = vec![0u8; IMG];
                for j in 0..num_bd + num_cross {
                    let img = &mut imgs[j * IMG..(j + 1) * IMG];
                    if j < num_bd {
                        attack.apply(img, &mut buf);
                        labels[j] = attack.target;
                    } else {
                        attack.apply_noise(img, &mut buf, rng);
                    }
                    img.copy_from_slice(&buf);
                }
            };
            sgd_epochs_resumable(model, data, &opts.sgd, Some(&hook), on_epoch, ckpt)
        }
        Some(kind) => {
            let attack = Attack::new(kind, opts.target);
            let mut poisoned = data.clone();
            for i in poison_indices(&data.labels, opts.target, opts.poison_rate, opts.sgd.seed) {
                attack.apply_in_place(&mut poisoned.pixels[i * IMG..(i + 1) * IMG]);
                poisoned.labels[i] = opts.target;
            }
            sgd_epochs_resumable(model, &poisoned, &opts.sgd, None, on_epoch, ckpt)
        }
    }
}
