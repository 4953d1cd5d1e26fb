//! Acc / ASR / RA (spec section 6), computed in eval mode in batches.
//! - Acc: top-1 on the clean test set;
//! - ASR: over test images whose label != target, with the trigger applied: fraction predicted as the target;
//! - RA: the same poisoned set: fraction predicted as the original label.
use serde::Serialize;

use super::attacks::{poisoned_test_set, Attack, IMG};
use super::LabeledImages;
use crate::error::Result;

/// Anything that maps pixel-space images to logits (the model in eval mode, or a hand-made rule in tests).
pub trait Classifier {
    fn num_classes(&self) -> usize;
    /// `x`: n images [n,3,32,32] in [0,1]; returns logits [n, num_classes].
    fn logits(&self, x: &[f32], n: usize) -> Result<Vec<f32>>;
}

/// Top-1 predictions for u8 images (CIFAR layout), `batch` images at a time.
pub fn predict(clf: &dyn Classifier, images: &[u8], batch: usize) -> Result<Vec<u32>> {
    let n = images.len() / IMG;
    let k = clf.num_classes();
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let x = super::u8_to_pixels(&images[start * IMG..end * IMG]);
        let logits = clf.logits(&x, end - start)?;
        out.extend(logits.chunks(k).map(argmax));
    }
    Ok(out)
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub acc: f64,
    pub n: usize,
    /// None without an attack.
    pub asr: Option<f64>,
    pub ra: Option<f64>,
    pub n_poisoned: usize,
}

/// Acc on `test`, and ASR/RA under `attack` when given.
pub fn evaluate(
    clf: &dyn Classifier,
    test: &LabeledImages,
    attack: Option<&Attack>,
    batch: usize,
) -> Result<Metrics> {
    let pred = predict(clf, &test.pixels, batch)?;
    let correct = pred
        .iter()
        .zip(&test.labels)
        .filter(|(p, y)| p == y)
        .count();
    let acc = correct as f64 / test.labels.len().max(1) as f64;
    let (mut asr, mut ra, mut n_poisoned) = (None, None, 0);
    if let Some(a) = attack {
        let (img, lab) = poisoned_test_set(&test.pixels, &test.labels, a);
        let pred = predict(clf, &img, batch)?;
        n_poisoned = lab.len();
        let denom = n_poisoned.max(1) as f64;
        asr = Some(pred.iter().filter(|&&p| p == a.target).count() as f64 / denom);
        ra = Some(pred.iter().zip(&lab).filter(|(p, y)| p == y).count() as f64 / denom);
    }
    Ok(Metrics {
        acc,
        n: test.labels.len(),
        asr,
        ra,
        n_poisoned,
    })
}
