//! Host-side FMP pieces that need no model: attack triggers on known pixels, selection and its tie-break,
//! the reference-order remap, fraction parsing, metrics on a hand-made classifier, subsets, augmentation.
use fmp_engine::fmp::attacks::{
    bicubic_upsample, poison_indices, warp, Attack, AttackKind, IMG, PLANE,
};
use fmp_engine::fmp::augment::{balanced_subset, crop_flip_with};
use fmp_engine::fmp::metrics::{evaluate, Classifier};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::select::{parse_fraction, reference_order_remap, select_lowest};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::Result;

fn random_image(seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..IMG).map(|_| r.below(256) as u8).collect()
}

#[test]
fn badnets_sets_exactly_the_bottom_right_3x3() {
    let img = random_image(1);
    let mut out = vec![0; IMG];
    Attack::new(AttackKind::BadNets, 0).apply(&img, &mut out);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let i = c * PLANE + y * 32 + x;
                if y >= 29 && x >= 29 {
                    assert_eq!(out[i], 255, "c{c} y{y} x{x}");
                } else {
                    assert_eq!(out[i], img[i], "c{c} y{y} x{x} changed");
                }
            }
        }
    }
}

#[test]
fn blended_truncates_the_mix() {
    let a = Attack::new(AttackKind::Blended, 0);
    let p = a.pattern();
    assert_eq!(p.len(), IMG);
    // a noise key: many distinct values, roughly uniform mean
    let mean = p.iter().map(|&v| v as f64).sum::<f64>() / IMG as f64;
    assert!((mean - 127.5).abs() < 8.0, "pattern mean {mean}");
    let img = random_image(2);
    let mut out = vec![0; IMG];
    a.apply(&img, &mut out);
    for &i in &[0usize, 77, 1500, 3071] {
        let want = (0.8f32 * img[i] as f32 + 0.2 * p[i] as f32).floor() as u8;
        assert_eq!(out[i], want, "pixel {i}");
    }
    // hand-computed: 0.8*200 + 0.2*255 = 211 exactly, 0.8*1 + 0.2*0 = 0.8 -> 0
    let mut img2 = vec![200u8; IMG];
    let j = p.iter().position(|&v| v == 255).expect("a 255 in the key");
    img2[j] = 200;
    a.apply(&img2, &mut out);
    assert_eq!(out[j], 211);
    let k = p.iter().position(|&v| v == 0).expect("a 0 in the key");
    img2[k] = 1;
    a.apply(&img2, &mut out);
    assert_eq!(out[k], 0);
}

#[test]
fn lowfreq_pattern_is_smooth_in_range_and_clips() {
    let a = Attack::new(AttackKind::LowFreq, 0);
    let p = a.pattern();
    assert_eq!(*p.iter().max().unwrap(), 51);
    assert_eq!(*p.iter().min().unwrap(), 0);
    // smooth: neighbouring pixels differ by little (at most 2 cycles over 32 pixels)
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..31 {
                let d =
                    (p[c * PLANE + y * 32 + x] as i32 - p[c * PLANE + y * 32 + x + 1] as i32).abs();
                assert!(d <= 10, "jump {d} at c{c} y{y} x{x}");
            }
        }
    }
    let mut img = random_image(3);
    img[5] = 250;
    let mut out = vec![0; IMG];
    a.apply(&img, &mut out);
    for i in 0..IMG {
        assert_eq!(out[i] as u16, (img[i] as u16 + p[i] as u16).min(255));
    }
    // deterministic
    assert_eq!(Attack::new(AttackKind::LowFreq, 0).pattern(), p);
}

#[test]
fn bicubic_matches_pytorch_align_corners() {
    // src[i,j] = ((i*4+j)*7 % 11)/5 - 1; expected values from torch.nn.functional.interpolate(bicubic, align_corners=True)
    let src: Vec<f32> = (0..16).map(|k| ((k * 7) % 11) as f32 / 5.0 - 1.0).collect();
    let up = bicubic_upsample(&src, 4, 32);
    for &(y, x, want) in &[
        (0, 0, -1.0f32),
        (0, 31, 1.0),
        (5, 7, -0.284234),
        (13, 22, 0.612630),
        (31, 17, 0.566366),
        (16, 16, 0.300101),
    ] {
        assert!(
            (up[y * 32 + x] - want).abs() < 2e-5,
            "({y},{x}) {} vs {want}",
            up[y * 32 + x]
        );
    }
}

#[test]
fn warp_matches_pytorch_grid_sample() {
    let img: Vec<u8> = (0..IMG).map(|i| ((i * 37) % 256) as u8).collect();
    // identity grid shifted by +0.3 px in x and -0.6 px in y (align_corners: 1 px = 2/31)
    let grid: Vec<[f32; 2]> = (0..PLANE)
        .map(|p| {
            let (y, x) = ((p / 32) as f32, (p % 32) as f32);
            [
                (-1.0 + 2.0 * (x + 0.3) / 31.0).clamp(-1.0, 1.0),
                (-1.0 + 2.0 * (y - 0.6) / 31.0).clamp(-1.0, 1.0),
            ]
        })
        .collect();
    let mut out = vec![0; IMG];
    warp(&img, &grid, &mut out);
    // torch.nn.functional.grid_sample(align_corners=True) gave 11.1, 93.1, 123.0, 186.7, 123.38
    for &(c, y, x, want) in &[
        (0, 0, 0, 11u8),
        (1, 10, 10, 93),
        (2, 31, 31, 123),
        (0, 5, 30, 187),
        (1, 20, 3, 123),
    ] {
        assert_eq!(out[c * PLANE + y * 32 + x], want, "c{c} y{y} x{x}");
    }
}

#[test]
fn wanet_grid_is_a_small_warp_and_noise_mode_differs() {
    let a = Attack::new(AttackKind::WaNet, 0);
    let g = a.grid();
    assert_eq!(g.len(), PLANE);
    let mut max_shift = 0f32;
    for (p, &[gx, gy]) in g.iter().enumerate() {
        assert!((-1.0..=1.0).contains(&gx) && (-1.0..=1.0).contains(&gy));
        let ix = -1.0 + 2.0 * (p % 32) as f32 / 31.0;
        let iy = -1.0 + 2.0 * (p / 32) as f32 / 31.0;
        max_shift = max_shift.max((gx - ix).abs()).max((gy - iy).abs());
    }
    // s * field / 32 with field normalised to mean |.| = 1: shifts well below 0.1 but not zero
    assert!(
        max_shift > 0.005 && max_shift < 0.15,
        "max shift {max_shift}"
    );
    let img = random_image(4);
    let (mut w, mut n) = (vec![0; IMG], vec![0; IMG]);
    a.apply(&img, &mut w);
    a.apply_noise(&img, &mut n, &mut Rng::new(9));
    assert_ne!(w, img);
    assert_ne!(w, n);
    // a constant image stays constant away from the border (convex bilinear weights)
    let flat = vec![100u8; IMG];
    a.apply(&flat, &mut w);
    for y in 1..31 {
        for x in 1..31 {
            assert_eq!(w[y * 32 + x], 100);
        }
    }
}

#[test]
fn unknown_attack_is_a_clear_error() {
    let e = "trojan".parse::<AttackKind>().unwrap_err().to_string();
    assert!(
        e.contains("unknown attack 'trojan'") && e.contains("badnets"),
        "{e}"
    );
    assert_eq!(
        "LowFreq".parse::<AttackKind>().unwrap(),
        AttackKind::LowFreq
    );
}

#[test]
fn poison_indices_avoid_the_target_and_are_seeded() {
    let labels: Vec<u32> = (0..1000).map(|i| (i * 7 % 10) as u32).collect();
    let a = poison_indices(&labels, 0, 0.1, 0);
    assert_eq!(a.len(), 100);
    assert!(a.iter().all(|&i| labels[i] != 0));
    assert_eq!(a, poison_indices(&labels, 0, 0.1, 0));
    assert_ne!(a, poison_indices(&labels, 0, 0.1, 1));
}

#[test]
fn fractions_parse() {
    assert!((parse_fraction("4/255").unwrap() - 4.0 / 255.0).abs() < 1e-9);
    assert!((parse_fraction("0.0157").unwrap() - 0.0157).abs() < 1e-9);
    assert!((parse_fraction(" 1 / 255 ").unwrap() - 1.0 / 255.0).abs() < 1e-9);
    for bad in ["4/0", "four", "", "1/x", "nan"] {
        assert!(parse_fraction(bad).is_err(), "{bad}");
    }
}

#[test]
fn selection_lowest_with_tie_break() {
    // 8 channels, p = 4 -> 2 selected
    let scores = [0.5, 0.25, 0.25, 0.75, 0.25, 1.0, 0.5, 0.25];
    let probs = [0.1, 0.4, 0.3, 0.1, 0.3, 0.1, 0.1, 0.9];
    // lowest score 0.25: channels 1, 2, 4, 7; by prob: 2 (0.3), 4 (0.3), 1, 7; 2 before 4 by index
    assert_eq!(select_lowest(&scores, &probs, 4).unwrap(), vec![2, 4]);
    assert_eq!(select_lowest(&scores, &probs, 2).unwrap(), vec![2, 4, 1, 7]);
    assert_eq!(select_lowest(&scores, &probs, 3).unwrap(), vec![2, 4]); // floor(8/3) = 2
    assert_eq!(select_lowest(&scores, &probs, 8).unwrap(), vec![2]);
    let e = select_lowest(&scores, &probs, 64).unwrap_err().to_string();
    assert!(e.contains("--p 64") && e.contains("8 channels"), "{e}");
    assert!(select_lowest(&scores, &probs, 0).is_err());
}

#[test]
fn reference_order_moves_selections_inside_downsampling_blocks() {
    let names: Vec<String> = [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer2.0.shortcut.0",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.1.conv1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sel: Vec<Vec<usize>> = (0..names.len()).map(|i| vec![i]).collect();
    let r = reference_order_remap(&names, &sel);
    // registration: conv1, l1.0.conv1, l1.0.conv2, l2.0.conv1, l2.0.conv2, l2.0.shortcut, l2.1.conv1
    // the r-th registered conv receives the selection computed for execution index r
    assert_eq!(r[0], vec![0]);
    assert_eq!(r[1], vec![1]);
    assert_eq!(r[2], vec![2]);
    assert_eq!(r[4], vec![3], "layer2.0.conv1 gets the shortcut's ranking");
    assert_eq!(r[5], vec![4], "layer2.0.conv2 gets conv1's");
    assert_eq!(r[3], vec![5], "the shortcut gets conv2's");
    assert_eq!(r[6], vec![6]);
}

/// Predicts `target` when the bottom-right pixel is white, else the label encoded in pixel 0 (or a wrong one).
struct Rule {
    target: u32,
}
impl Classifier for Rule {
    fn num_classes(&self) -> usize {
        4
    }
    fn logits(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; n * 4];
        for i in 0..n {
            let img = &x[i * IMG..(i + 1) * IMG];
            let class = if img[31 * 32 + 31] > 0.999 && img[PLANE + 31 * 32 + 31] > 0.999 {
                self.target as usize
            } else {
                (img[0] * 255.0).round() as usize % 4
            };
            out[i * 4 + class] = 1.0;
        }
        Ok(out)
    }
}

#[test]
fn metrics_on_a_hand_made_case() {
    // 6 images; labels 0,1,2,3,1,2; pixel 0 encodes the prediction: 0,1,2,0,1,3 -> 4 of 6 correct
    let labels = vec![0u32, 1, 2, 3, 1, 2];
    let preds = [0u8, 1, 2, 0, 1, 3];
    let mut pixels = vec![0u8; 6 * IMG];
    for i in 0..6 {
        pixels[i * IMG] = preds[i];
    }
    // image 4 already carries a white bottom-right corner in channel 0 only: not a trigger
    pixels[4 * IMG + 31 * 32 + 31] = 255;
    let test = LabeledImages {
        pixels,
        labels,
        num_classes: 4,
    };
    let m = evaluate(&Rule { target: 1 }, &test, None, 4).unwrap();
    assert!((m.acc - 4.0 / 6.0).abs() < 1e-12);
    assert_eq!(m.asr, None);
    // BadNets to target 1: poisoned set = labels != 1 -> images 0,2,3,5; all predicted 1 -> ASR 1, RA 0
    let m = evaluate(
        &Rule { target: 1 },
        &test,
        Some(&Attack::new(AttackKind::BadNets, 1)),
        3,
    )
    .unwrap();
    assert_eq!(m.n_poisoned, 4);
    assert_eq!(m.asr, Some(1.0));
    assert_eq!(m.ra, Some(0.0));
    // LowFreq shifts pixel 0 by P[0]; the rule then predicts (pred + P[0]) % 4
    let lf = Attack::new(AttackKind::LowFreq, 1);
    let shift = lf.pattern()[0] as usize;
    let poisoned = [0usize, 2, 3, 5];
    let pred = |i: usize| ((preds[i] as usize + shift).min(255) % 4) as u32;
    let want_asr = poisoned.iter().filter(|&&i| pred(i) == 1).count() as f64 / 4.0;
    let want_ra = poisoned
        .iter()
        .filter(|&&i| pred(i) == test.labels[i])
        .count() as f64
        / 4.0;
    let m = evaluate(&Rule { target: 1 }, &test, Some(&lf), 5).unwrap();
    assert_eq!(m.n_poisoned, 4);
    assert_eq!(m.asr, Some(want_asr));
    assert_eq!(m.ra, Some(want_ra));
}

#[test]
fn balanced_subset_is_floor_n_ratio_over_k_per_class() {
    let labels: Vec<u32> = (0..1003).map(|i| (i % 10) as u32).collect();
    let s = balanced_subset(&labels, 10, 0.1, 0);
    assert_eq!(s.len(), 100); // floor(1003*0.1/10) = 10 per class
    for c in 0..10 {
        assert_eq!(s.iter().filter(|&&i| labels[i] == c).count(), 10);
    }
    assert_eq!(s, balanced_subset(&labels, 10, 0.1, 0));
    assert_ne!(s, balanced_subset(&labels, 10, 0.1, 1));
}

#[test]
fn crop_and_flip_move_known_pixels() {
    let img: Vec<u8> = (0..IMG).map(|i| (i % 251) as u8).collect();
    let mut out = vec![0f32; IMG];
    crop_flip_with(&img, 0, 0, false, &mut out);
    assert!(out
        .iter()
        .zip(&img)
        .all(|(&o, &i)| (o - i as f32 / 255.0).abs() < 1e-7));
    // shift by (2, -3): out(y, x) = in(y+2, x-3), zero where outside
    crop_flip_with(&img, 2, -3, false, &mut out);
    assert_eq!(out[5 * 32 + 10], img[7 * 32 + 7] as f32 / 255.0);
    assert_eq!(out[PLANE + 31 * 32 + 10], 0.0);
    assert_eq!(out[5 * 32 + 1], 0.0);
    crop_flip_with(&img, 0, 0, true, &mut out);
    assert_eq!(
        out[2 * PLANE + 4 * 32],
        img[2 * PLANE + 4 * 32 + 31] as f32 / 255.0
    );
}
