//! Backdoor triggers (spec section 7), all-to-one, applied to u8 images in CIFAR layout
//! (3 planes of 32x32, row-major: index `c*1024 + y*32 + x`).
//!
//! - BadNets: rows and columns 29..=31 set to 255 in every channel.
//! - Blended: `trunc(0.8 * img + 0.2 * pattern)`. The pattern is a uniform random-noise key image (the
//!   "random noise" key of Chen et al. 2017's blended injection): every byte drawn uniformly from 0..=255 by
//!   `Rng::derive(0, "blended-pattern")` in index order.
//! - Low Frequency: `clip(img + P, 0, 255)` with a smooth pattern P in 0..=51. Per channel, P is the sum of
//!   six cosines `a * cos(2*pi*(u*x + v*y)/32 + phi)` with (u, v) in {0,1,2}^2 \ {(0,0)} (at most 2 cycles per
//!   image side: a low-pass pattern), a in U(0.5, 1), phi in U(0, 2*pi), all drawn from
//!   `Rng::derive(0, "lowfreq-pattern")`; the three channels are then min-max scaled together to [0, 51] and
//!   rounded.
//! - WaNet (k = 4, s = 0.5): a 2xkxk field uniform in (-1, 1) from `Rng::derive(0, "wanet-field")`, divided by
//!   its mean |.|, bicubic-upsampled to 32x32 (PyTorch `interpolate(mode="bicubic", align_corners=True)`,
//!   A = -0.75, clamped borders), `grid = clamp(identity + s * field / 32, -1, 1)`, then bilinear sampling with
//!   align_corners=True and zero padding (PyTorch `grid_sample`). Noise mode adds `U(-1,1)/32` per grid entry
//!   (fresh per image) before the clamp. The warped image is rounded back to u8, so every attack maps a u8 image
//!   to a u8 image and training applies triggers before augmentation, as section 7 says.
use super::rng::Rng;

pub const SIDE: usize = 32;
pub const PLANE: usize = SIDE * SIDE;
/// Bytes of one 3x32x32 image.
pub const IMG: usize = 3 * PLANE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttackKind {
    BadNets,
    Blended,
    LowFreq,
    WaNet,
}

crate::named_enum! {
    AttackKind {
        BadNets => "badnets" | "badnet",
        Blended => "blended" | "blend",
        LowFreq => "lowfreq" | "low-frequency" | "lf",
        WaNet => "wanet",
    } else |s| format!("unknown attack '{s}': expected badnets, blended, lowfreq or wanet")
}

impl std::fmt::Display for AttackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An all-to-one attack: its trigger and target class.
#[derive(Clone, Debug)]
pub struct Attack {
    pub kind: AttackKind,
    pub target: u32,
    /// Blended key image or Low Frequency pattern ([3*32*32], CIFAR layout); empty otherwise.
    pattern: Vec<u8>,
    /// WaNet sampling grid: (x, y) in [-1, 1] for every output pixel, row-major.
    grid: Vec<[f32; 2]>,
}

pub const BLEND_ALPHA: f32 = 0.2;
pub const WANET_K: usize = 4;
pub const WANET_S: f32 = 0.5;
pub const WANET_CROSS_RATIO: f32 = 2.0;

impl Attack {
    pub fn new(kind: AttackKind, target: u32) -> Self {
        let (pattern, grid) = match kind {
            AttackKind::BadNets => (Vec::new(), Vec::new()),
            AttackKind::Blended => (blended_pattern(), Vec::new()),
            AttackKind::LowFreq => (lowfreq_pattern(), Vec::new()),
            AttackKind::WaNet => (Vec::new(), wanet_grid(WANET_K, WANET_S, 0)),
        };
        Attack {
            kind,
            target,
            pattern,
            grid,
        }
    }

    /// The trigger pattern of Blended / Low Frequency (CIFAR layout), empty for the others.
    pub fn pattern(&self) -> &[u8] {
        &self.pattern
    }
    /// The WaNet sampling grid (empty for the others).
    pub fn grid(&self) -> &[[f32; 2]] {
        &self.grid
    }

    /// Apply the trigger to one image (`img`, `out`: [3*32*32]).
    pub fn apply(&self, img: &[u8], out: &mut [u8]) {
        assert_eq!(img.len(), IMG);
        assert_eq!(out.len(), IMG);
        match self.kind {
            AttackKind::BadNets => {
                out.copy_from_slice(img);
                for c in 0..3 {
                    for y in 29..32 {
                        for x in 29..32 {
                            out[c * PLANE + y * SIDE + x] = 255;
                        }
                    }
                }
            }
            AttackKind::Blended => {
                for i in 0..IMG {
                    let v =
                        (1.0 - BLEND_ALPHA) * img[i] as f32 + BLEND_ALPHA * self.pattern[i] as f32;
                    out[i] = v.clamp(0.0, 255.0) as u8; // truncation, as numpy's astype(uint8)
                }
            }
            AttackKind::LowFreq => {
                for i in 0..IMG {
                    out[i] = (img[i] as u16 + self.pattern[i] as u16).min(255) as u8;
                }
            }
            AttackKind::WaNet => warp(img, &self.grid, out),
        }
    }

    /// Apply in place.
    pub fn apply_in_place(&self, img: &mut [u8]) {
        let src = img.to_vec();
        self.apply(&src, img);
    }

    /// WaNet "noise mode" (cross samples): the grid plus fresh U(-1,1)/32 noise, clamped. The caller keeps
    /// the label. Only meaningful for WaNet; other attacks copy the image unchanged.
    pub fn apply_noise(&self, img: &[u8], out: &mut [u8], rng: &mut Rng) {
        if self.kind != AttackKind::WaNet {
            out.copy_from_slice(img);
            return;
        }
        let g: Vec<[f32; 2]> = self
            .grid
            .iter()
            .map(|&[x, y]| {
                let nx = rng.range(-1.0, 1.0) / SIDE as f32;
                let ny = rng.range(-1.0, 1.0) / SIDE as f32;
                [(x + nx).clamp(-1.0, 1.0), (y + ny).clamp(-1.0, 1.0)]
            })
            .collect();
        warp(img, &g, out);
    }
}

fn blended_pattern() -> Vec<u8> {
    let mut rng = Rng::derive(0, "blended-pattern");
    (0..IMG).map(|_| rng.below(256) as u8).collect()
}

fn lowfreq_pattern() -> Vec<u8> {
    let mut rng = Rng::derive(0, "lowfreq-pattern");
    let freqs: Vec<(f32, f32)> = (0..3)
        .flat_map(|u| (0..3).map(move |v| (u as f32, v as f32)))
        .filter(|&(u, v)| u + v > 0.0)
        .collect();
    let mut raw = vec![0f32; IMG];
    for c in 0..3 {
        let terms: Vec<(f32, f32, f32, f32)> = (0..6)
            .map(|_| {
                let (u, v) = freqs[rng.below(freqs.len())];
                (
                    u,
                    v,
                    rng.range(0.5, 1.0),
                    rng.range(0.0, 2.0 * std::f32::consts::PI),
                )
            })
            .collect();
        for y in 0..SIDE {
            for x in 0..SIDE {
                let mut s = 0.0;
                for &(u, v, a, phi) in &terms {
                    s += a
                        * (2.0 * std::f32::consts::PI * (u * x as f32 + v * y as f32)
                            / SIDE as f32
                            + phi)
                            .cos();
                }
                raw[c * PLANE + y * SIDE + x] = s;
            }
        }
    }
    let lo = raw.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = raw.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    raw.iter()
        .map(|&v| ((v - lo) / (hi - lo) * 51.0).round() as u8)
        .collect()
}

/// PyTorch's cubic convolution weights (A = -0.75) for fractional offset t in [0, 1).
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Bicubic upsampling of one `n x n` plane to `out x out` with align_corners=True and clamped border
/// access (PyTorch `interpolate(mode="bicubic", align_corners=True)`).
pub fn bicubic_upsample(src: &[f32], n: usize, out: usize) -> Vec<f32> {
    assert_eq!(src.len(), n * n);
    let scale = if out > 1 {
        (n - 1) as f32 / (out - 1) as f32
    } else {
        0.0
    };
    let at = |y: isize, x: isize| {
        src[y.clamp(0, n as isize - 1) as usize * n + x.clamp(0, n as isize - 1) as usize]
    };
    let mut dst = vec![0f32; out * out];
    for oy in 0..out {
        let sy = oy as f32 * scale;
        let iy = sy.floor();
        let wy = cubic_weights(sy - iy);
        for ox in 0..out {
            let sx = ox as f32 * scale;
            let ix = sx.floor();
            let wx = cubic_weights(sx - ix);
            let mut v = 0.0;
            for (m, wym) in wy.iter().enumerate() {
                let mut row = 0.0;
                for (k, wxk) in wx.iter().enumerate() {
                    row += wxk * at(iy as isize - 1 + m as isize, ix as isize - 1 + k as isize);
                }
                v += wym * row;
            }
            dst[oy * out + ox] = v;
        }
    }
    dst
}

/// The WaNet grid for field size k, strength s, field seed.
pub fn wanet_grid(k: usize, s: f32, seed: u64) -> Vec<[f32; 2]> {
    let mut rng = Rng::derive(seed, "wanet-field");
    let mut ins: Vec<f32> = (0..2 * k * k).map(|_| rng.range(-1.0, 1.0)).collect();
    let mean_abs = ins.iter().map(|v| v.abs()).sum::<f32>() / ins.len() as f32;
    ins.iter_mut().for_each(|v| *v /= mean_abs);
    let fx = bicubic_upsample(&ins[..k * k], k, SIDE);
    let fy = bicubic_upsample(&ins[k * k..], k, SIDE);
    let lin = |i: usize| -1.0 + 2.0 * i as f32 / (SIDE - 1) as f32;
    let mut grid = Vec::with_capacity(PLANE);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let gx = (lin(x) + s * fx[y * SIDE + x] / SIDE as f32).clamp(-1.0, 1.0);
            let gy = (lin(y) + s * fy[y * SIDE + x] / SIDE as f32).clamp(-1.0, 1.0);
            grid.push([gx, gy]);
        }
    }
    grid
}

/// Bilinear `grid_sample` (align_corners=True, zero padding) of a u8 image, rounded back to u8.
pub fn warp(img: &[u8], grid: &[[f32; 2]], out: &mut [u8]) {
    assert_eq!(grid.len(), PLANE);
    let w = SIDE as isize;
    for (p, &[gx, gy]) in grid.iter().enumerate() {
        let ix = (gx + 1.0) / 2.0 * (SIDE - 1) as f32;
        let iy = (gy + 1.0) / 2.0 * (SIDE - 1) as f32;
        let x0 = ix.floor();
        let y0 = iy.floor();
        let tx = ix - x0;
        let ty = iy - y0;
        let (x0, y0) = (x0 as isize, y0 as isize);
        let taps = [
            (y0, x0, (1.0 - ty) * (1.0 - tx)),
            (y0, x0 + 1, (1.0 - ty) * tx),
            (y0 + 1, x0, ty * (1.0 - tx)),
            (y0 + 1, x0 + 1, ty * tx),
        ];
        for c in 0..3 {
            let plane = &img[c * PLANE..(c + 1) * PLANE];
            let mut v = 0.0f32;
            for &(yy, xx, wt) in &taps {
                if (0..w).contains(&yy) && (0..w).contains(&xx) {
                    v += wt * plane[yy as usize * SIDE + xx as usize] as f32;
                }
            }
            out[c * PLANE + p] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Indices of the training images to poison for BadNets / Blended / Low Frequency: `round(rate * N)` images
/// drawn (seeded) among those whose label is not the target, sorted.
pub fn poison_indices(labels: &[u32], target: u32, rate: f32, seed: u64) -> Vec<usize> {
    let mut cand: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != target).collect();
    let n = ((rate * labels.len() as f32).round() as usize).min(cand.len());
    let mut rng = Rng::derive(seed, "poison-indices");
    rng.shuffle(&mut cand);
    let mut idx = cand[..n].to_vec();
    idx.sort_unstable();
    idx
}

/// The poisoned test set of section 6: every image whose label != target, with the trigger applied.
/// Returns (images, original labels).
pub fn poisoned_test_set(images: &[u8], labels: &[u32], attack: &Attack) -> (Vec<u8>, Vec<u32>) {
    let mut out_img = Vec::new();
    let mut out_lab = Vec::new();
    let mut buf = vec![0u8; IMG];
    for (i, &y) in labels.iter().enumerate() {
        if y == attack.target {
            continue;
        }
        attack.apply(&images[i * IMG..(i + 1) * IMG], &mut buf);
        out_img.extend_from_slice(&buf);
        out_lab.push(y);
    }
    (out_img, out_lab)
}
