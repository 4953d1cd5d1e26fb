//! FRG scan: the batched engine (one-hot cotangents, stacked channel x sample chunks) gives the same scores
//! as the plain one-channel-at-a-time loop, for the same seed, on a small random model; chunking does not
//! change results; X0 follows the spec; the full scan selects floor(C/p) per conv.
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::fmp::frg::{make_x0, scan, scan_range, ConvScan, ScanOptions};
use fmp_engine::fmp::metrics::{argmax, Classifier};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::model::{ModelConfig, PreActResNet18};

const B: usize = 4;

fn setup(width: usize, b: usize) -> (PreActResNet18, Vec<f32>, Vec<u32>) {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let model = PreActResNet18::new_random(be, ModelConfig::cifar10(width), 7).unwrap();
    let mut r = Rng::new(11);
    let x: Vec<f32> = (0..b * 3072).map(|_| r.uniform()).collect();
    // labels = the model's own clean predictions, so clean accuracy is 1 and adversarial scores vary
    let labels: Vec<u32> = model
        .logits(&x, b)
        .unwrap()
        .chunks(10)
        .map(argmax)
        .collect();
    (model, x, labels)
}

#[test]
fn x0_is_a_clamped_sign_perturbation() {
    let x = vec![0.0, 1.0, 0.5, 0.5, 0.002, 0.999];
    let x0 = make_x0(&x, 1.0 / 255.0, 3);
    for (a, b) in x.iter().zip(&x0) {
        let d = (b - a).abs();
        assert!((0.0..=1.0).contains(b));
        assert!(
            (d - 1.0 / 255.0).abs() < 1e-6 || *b == 0.0 || *b == 1.0,
            "{a} -> {b}"
        );
    }
    assert_eq!(x0, make_x0(&x, 1.0 / 255.0, 3));
    let big: Vec<f32> = vec![0.5; 1000];
    let up = make_x0(&big, 0.1, 0).iter().filter(|&&v| v > 0.5).count();
    assert!(up > 400 && up < 600, "{up} of 1000 went up");
}

#[test]
fn batched_equals_naive_on_every_conv() {
    let (model, x, labels) = setup(8, B);
    let be = model.backend().clone();
    let xt = be.from_host(&x, &[B, 3, 32, 32]).unwrap();
    let x0t = be
        .from_host(&make_x0(&x, 1.0 / 255.0, 0), &[B, 3, 32, 32])
        .unwrap();
    let eps = 4.0 / 255.0;
    let mut varied = 0;
    // stem, a plain block conv1/conv2, every downsampling block's shortcut and conv1, and the last conv
    for l in [0, 2, 5, 6, 11, 15, 19] {
        let c = model.convs()[l].params.c_out as usize;
        let s = ConvScan {
            model: &model,
            x: &xt,
            x0: &x0t,
            labels: &labels,
            layer: l,
        };
        let mut done_b = 0;
        let all = s.all_channels().unwrap();
        let batched = ScanOptions {
            eps,
            ..ScanOptions::default()
        };
        let naive = ScanOptions {
            naive: true,
            ..batched.clone()
        };
        let batched = scan_range(s, all.clone(), &batched, 3, &mut |k| done_b += k).unwrap();
        let mut done_n = 0;
        let naive = scan_range(s, all, &naive, 0, &mut |k| done_n += k).unwrap();
        assert_eq!((done_b, done_n), (c, c));
        assert_eq!(batched.scores.len(), c);
        assert_eq!(
            batched.scores,
            naive.scores,
            "conv {l} ({})",
            model.convs()[l].name
        );
        for (i, (a, b)) in batched.true_prob.iter().zip(&naive.true_prob).enumerate() {
            assert!(
                (a - b).abs() < 1e-4,
                "conv {l} channel {i}: prob {a} vs {b}"
            );
        }
        if batched.scores.iter().any(|&s| s != batched.scores[0]) {
            varied += 1;
        }
    }
    // the test only means something when the perturbations actually change predictions
    assert!(varied >= 2, "scores varied in only {varied} convs");
}

#[test]
fn chunk_size_does_not_change_the_scan() {
    // width 4 (300 feature maps), 2 samples: three full scans stay cheap
    let (model, x, labels) = setup(4, 2);
    let opts = |chunk| ScanOptions {
        p: 4,
        chunk,
        ..ScanOptions::default()
    };
    let (a, _) = scan(&model, &x, &labels, &opts(Some(1)), &mut |_| {}).unwrap();
    let (b, k) = scan(&model, &x, &labels, &opts(None), &mut |_| {}).unwrap();
    assert!(k >= 1);
    assert_eq!(a, b);
    assert_eq!(a.len(), 20);
    for c in &a {
        assert_eq!(c.selected.len(), c.channels / 4, "{}", c.name);
    }
    let total: usize = a.iter().map(|c| c.selected.len()).sum();
    assert_eq!(total, 1 + 4 + 5 * 2 + 5 * 4 + 5 * 8);
    // --reference-order only moves selections inside the downsampling blocks
    let (r, _) = scan(
        &model,
        &x,
        &labels,
        &ScanOptions {
            reference_order: true,
            ..opts(None)
        },
        &mut |_| {},
    )
    .unwrap();
    let by = |v: &[fmp_engine::fmp::select::ConvReport], n: &str| {
        v.iter().find(|c| c.name == n).unwrap().selected.clone()
    };
    assert_eq!(by(&r, "layer2.0.conv1"), by(&a, "layer2.0.shortcut.0"));
    assert_eq!(by(&r, "layer3.0.shortcut.0"), by(&a, "layer3.0.conv2"));
    assert_eq!(by(&r, "layer1.1.conv2"), by(&a, "layer1.1.conv2"));
    // p wider than a layer is an error naming it
    let e = scan(
        &model,
        &x,
        &labels,
        &ScanOptions {
            p: 8,
            ..ScanOptions::default()
        },
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--p 8") && e.contains("conv1"), "{e}");
}
