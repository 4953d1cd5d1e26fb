//! Fine-tuning step benchmark: one SGD step of the spec's fine-tuning (section 5) -- train-mode
//! forward, softmax cross-entropy, backward with weight gradients, SGD with momentum -- at batch
//! `batch` on random images, timed over `steps` steps after `warmup`. Projects the spec's default
//! fine-tuning (10 epochs over `images` images) from the median step. Its PyTorch peer is
//! `benches/peers/finetune_peer.py` (same model, batch, optimiser).
use std::time::Instant;

use super::count::{Arch, OpCost};
use super::device::{ceilings_for, Ceilings};
use super::kernels::git_commit;
use super::profile::{profiled, ProfileEntry};
use super::timing::BenchDevice;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, PreActResNet18, SgdState};
use crate::rng::{Rng, Stream};

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBenchConfig {
    pub width: usize,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Images per epoch and epochs of the projected fine-tuning (spec: 10% of 10,000, 10 epochs).
    pub images: usize,
    pub epochs: usize,
    pub seed: u64,
    pub profile: bool,
}

impl Default for TrainBenchConfig {
    fn default() -> Self {
        TrainBenchConfig {
            width: 16,
            batch: 256,
            steps: 5,
            warmup: 1,
            images: 1000,
            epochs: 10,
            seed: 0,
            profile: false,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBenchReport {
    pub backend: String,
    pub ceilings: Ceilings,
    pub config: TrainBenchConfig,
    pub commit: Option<String>,
    pub step_s: Vec<f64>,
    pub median_step_s: f64,
    pub images_per_s: f64,
    /// Counted work of one step (forward + backward; the SGD update is not counted).
    pub counted_step: OpCost,
    pub gflops: f64,
    pub frac_peak_flops: f64,
    /// `epochs` x ceil(images / batch) steps at the median step time, scaled for the last partial batch.
    pub projected_finetune_s: f64,
    pub profile: Option<Vec<ProfileEntry>>,
}

pub fn run_train_bench(dev: &BenchDevice, cfg: &TrainBenchConfig) -> Result<TrainBenchReport> {
    if cfg.batch < 2 || cfg.steps == 0 || cfg.width == 0 {
        return Err(Error::InvalidArgument(format!(
            "bench train needs --batch >= 2, --steps >= 1 and --width >= 1 (got {}, {}, {})",
            cfg.batch, cfg.steps, cfg.width
        )));
    }
    let (pdev, prof) = profiled(dev, cfg.profile);
    let dev = pdev.as_ref().unwrap_or(dev);
    let be = dev.backend.clone();
    let mc = ModelConfig::cifar10(cfg.width);
    let k = mc.num_classes;
    let mut model = PreActResNet18::new_random(be.clone(), mc, cfg.seed)?;
    let mut rng = Rng::stream(Stream::Bench, cfg.seed ^ 0x7EA1);
    let n = cfg.batch;
    let pixels: Vec<f32> = (0..n * 3 * 1024).map(|_| rng.uniform()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below_mod(k) as u32).collect();
    let x = be.from_host(&pixels, &[n, 3, 32, 32])?;
    let y = be.indices_from_host(&labels)?;
    let mut state = SgdState::new();
    let mut step = |model: &mut PreActResNet18| -> Result<()> {
        let (logits, trace) = model.forward_train(&x)?;
        let mut loss = be.zeros(&[n])?;
        let mut dlogits = be.zeros(&[n, k])?;
        be.softmax_cross_entropy(&logits, &y, &mut loss, &mut dlogits)?;
        let grads = model.backward_train(&trace, &dlogits)?;
        model.sgd_step(&grads, &mut state, 0.01, 0.9, 0.0)?;
        be.to_host(&loss).map(|_| ())
    };
    for _ in 0..cfg.warmup {
        step(&mut model)?;
    }
    be.synchronize()?;
    if let Some(p) = &prof {
        p.take();
    }
    let mut step_s = Vec::with_capacity(cfg.steps);
    for _ in 0..cfg.steps {
        let t = Instant::now();
        step(&mut model)?;
        be.synchronize()?;
        step_s.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = step_s.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let counted = Arch::preact_resnet18(cfg.width, k).train_step(n as u64);
    let ceil = ceilings_for(&be.name(), be.is_gpu());
    let gflops = counted.flops as f64 / median / 1e9;
    let steps_per_epoch = cfg.images as f64 / n as f64;
    Ok(TrainBenchReport {
        backend: be.name(),
        commit: git_commit(),
        step_s,
        median_step_s: median,
        images_per_s: n as f64 / median,
        counted_step: counted,
        gflops,
        frac_peak_flops: gflops * 1e9 / ceil.peak_flops,
        projected_finetune_s: cfg.epochs as f64 * steps_per_epoch * median,
        ceilings: ceil,
        config: cfg.clone(),
        profile: prof.map(|p| p.take()),
    })
}

pub fn summary(r: &TrainBenchReport) -> String {
    format!(
        "# train step (batch {}, width {}): median {:.3} s, {:.1} images/s, {:.2} GFLOP/s counted ({:.2}% of peak)\n\
         # projected fine-tuning ({} images x {} epochs): {:.1} s",
        r.config.batch,
        r.config.width,
        r.median_step_s,
        r.images_per_s,
        r.gflops,
        100.0 * r.frac_peak_flops,
        r.config.images,
        r.config.epochs,
        r.projected_finetune_s
    )
}
