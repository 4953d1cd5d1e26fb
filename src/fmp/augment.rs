//! Training-time data handling: class-balanced clean subsets (spec section 5) and the CIFAR-10
//! augmentation RandomCrop(32, padding 4, zero fill) + RandomHorizontalFlip(0.5), on u8 images, producing
//! pixel-space f32 batches.
use super::attacks::{IMG, PLANE, SIDE};
use super::rng::Rng;

/// `floor(n * ratio / k)` images of every class, drawn with `Rng::derive(seed, "balanced-subset")`: each
/// class's indices are shuffled and the first ones kept. Returned sorted.
pub fn balanced_subset(labels: &[u32], num_classes: usize, ratio: f32, seed: u64) -> Vec<usize> {
    let per_class = ((labels.len() as f64 * ratio as f64) / num_classes as f64).floor() as usize;
    let mut rng = Rng::derive(seed, "balanced-subset");
    let mut out = Vec::new();
    for c in 0..num_classes as u32 {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        rng.shuffle(&mut idx);
        idx.truncate(per_class);
        out.extend(idx);
    }
    out.sort_unstable();
    out
}

/// Random crop (pad 4) + horizontal flip of one u8 image into `out` (pixel space [0, 1]).
pub fn crop_flip(img: &[u8], rng: &mut Rng, out: &mut [f32]) {
    let dy = rng.below(9) as isize - 4;
    let dx = rng.below(9) as isize - 4;
    let flip = rng.next_u64() >> 63 == 1;
    crop_flip_with(img, dy, dx, flip, out);
}

/// Output pixel (y, x) reads input (y + dy, x' + dx) (zero outside), x' = 31 - x when flipped.
pub fn crop_flip_with(img: &[u8], dy: isize, dx: isize, flip: bool, out: &mut [f32]) {
    assert_eq!(img.len(), IMG);
    let s = SIDE as isize;
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let xs = if flip { s - 1 - x } else { x };
                let (sy, sx) = (y + dy, xs + dx);
                let v = if (0..s).contains(&sy) && (0..s).contains(&sx) {
                    img[c * PLANE + (sy * s + sx) as usize] as f32 / 255.0
                } else {
                    0.0
                };
                out[c * PLANE + (y * s + x) as usize] = v;
            }
        }
    }
}
