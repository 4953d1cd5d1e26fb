//! The FMP defense (spec sections 3-7): attacks (triggers for building backdoored models), metrics
//! (Acc/ASR/RA), the FRG scan (batched and naive), per-layer selection and the report, pruning,
//! fine-tuning and BackdoorBench-style training. Host-side data is u8 images in CIFAR layout
//! (`attacks::IMG` bytes each) with u32 labels.
pub mod attacks;
pub mod augment;
pub mod baselines;
pub mod checkpoint;
pub mod controls;
pub mod download;
pub mod finetune;
pub mod frg;
pub mod frg_steps;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod prune;
/// The engine's one RNG (`crate::rng`); the pipeline draws from `Rng::new` / `Rng::derive` streams.
pub use crate::rng;
pub mod select;
pub mod stability;
pub mod train;

/// u8 images (CIFAR layout, [N, 3, 32, 32]) with labels.
#[derive(Clone, Debug, Default)]
pub struct LabeledImages {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub num_classes: usize,
}

impl LabeledImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * attacks::IMG..(i + 1) * attacks::IMG]
    }
    /// The images at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> LabeledImages {
        let mut pixels = Vec::with_capacity(idx.len() * attacks::IMG);
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        LabeledImages {
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
        }
    }
    /// The first `n` images (all when n >= len).
    pub fn truncate(mut self, n: usize) -> LabeledImages {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * attacks::IMG);
        self
    }
}

/// u8 -> [0, 1] f32.
pub fn u8_to_pixels(x: &[u8]) -> Vec<f32> {
    x.iter().map(|&v| v as f32 / 255.0).collect()
}

/// The one atomic write (temporary file beside `path`, fsync, rename), for reports, masks and
/// journals as for weights.
pub use crate::weights::write_atomic;
