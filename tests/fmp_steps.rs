//! FRG with several sign steps (`scan --steps S`): the batched engine gives the same scores as the plain
//! one-channel loop for S = 2 and 3, and with S = 1 the multi-step code computes what the scan's own chunk
//! step (`frg::score_channels`) computes. Repeated scans (`stability::scan_repeated`): R = 1 with the acc
//! score is the plain scan; R = 3 reports spread and agreement.
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::fmp::frg::{make_x0, scan, scan_range, ConvScan, ScanOptions};
use fmp_engine::fmp::metrics::{argmax, Classifier};
use fmp_engine::fmp::pipeline::scan_samples;
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::stability::{scan_repeated, Aggregate, RepeatOptions, ScoreKind};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::{ModelConfig, PreActResNet18};

fn model(width: usize) -> PreActResNet18 {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    PreActResNet18::new_random(be, ModelConfig::cifar10(width), 7).unwrap()
}

/// `n` random u8 images labelled with the model's own predictions (clean accuracy 1).
fn images(m: &PreActResNet18, n: usize) -> LabeledImages {
    let mut r = Rng::new(5);
    let pixels: Vec<u8> = (0..n * 3072).map(|_| r.below(256) as u8).collect();
    let x: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
    let labels = m.logits(&x, n).unwrap().chunks(10).map(argmax).collect();
    LabeledImages {
        pixels,
        labels,
        num_classes: 10,
    }
}

#[test]
fn multi_step_batched_equals_naive() {
    let m = model(4);
    let data = images(&m, 3);
    let (x, labels) = scan_samples(&data, 3, 0).unwrap();
    let be = m.backend().clone();
    let xt = be.from_host(&x, &[3, 3, 32, 32]).unwrap();
    let x0t = be
        .from_host(&make_x0(&x, 1.0 / 255.0, 0), &[3, 3, 32, 32])
        .unwrap();
    let eps = 4.0 / 255.0;
    let mut varied = 0;
    for l in [0, 3, 5, 6, 19] {
        let c = m.convs()[l].params.c_out as usize;
        let s = ConvScan {
            model: &m,
            x: &xt,
            x0: &x0t,
            labels: &labels,
            layer: l,
        };
        // S = 1: the batched chunk step against the naive per-channel loop
        let one = ScanOptions {
            steps: 1,
            eps,
            ..ScanOptions::default()
        };
        let all = s.all_channels().unwrap();
        let a = scan_range(s, all.clone(), &one, 3, &mut |_| {}).unwrap();
        let naive_one = ScanOptions { naive: true, ..one };
        let b = scan_range(s, all.clone(), &naive_one, 0, &mut |_| {}).unwrap();
        assert_eq!(a.scores, b.scores, "conv {l}, one step");
        for steps in [2, 3] {
            let o = ScanOptions {
                steps,
                eps,
                ..ScanOptions::default()
            };
            let mut done = 0;
            let bat = scan_range(s, all.clone(), &o, 3, &mut |k| done += k).unwrap();
            assert_eq!(done, c);
            let naive = ScanOptions { naive: true, ..o };
            let nai = scan_range(s, all.clone(), &naive, 0, &mut |_| {}).unwrap();
            assert_eq!(bat.scores, nai.scores, "conv {l}, {steps} steps");
            for (p, q) in bat.margin.iter().zip(&nai.margin) {
                assert!((p - q).abs() < 1e-3, "conv {l}: margin {p} vs {q}");
            }
            if bat.margin != a.margin {
                varied += 1;
            }
        }
    }
    // more steps must actually move the images further (else the check above says nothing)
    assert!(
        varied >= 3,
        "extra steps changed the margins in only {varied} cases"
    );
}

#[test]
fn repeated_scan_reports_spread_and_agreement() {
    let m = model(4);
    let data = images(&m, 12);
    let opts = ScanOptions {
        p: 4,
        ..ScanOptions::default()
    };
    let ro = |repeats, score| RepeatOptions {
        samples: 2,
        repeats,
        score,
        aggregate: Aggregate::Mean,
    };
    // R = 1, acc: exactly the plain scan of the same draw
    let (one, st, _) =
        scan_repeated(&m, &data, &opts, &ro(1, ScoreKind::Acc), &mut |_| {}).unwrap();
    assert!(st.is_none());
    let (x, labels) = scan_samples(&data, 2, 0).unwrap();
    let (plain, _) = scan(&m, &x, &labels, &opts, &mut |_| {}).unwrap();
    assert_eq!(one, plain);
    // R = 3, margin: aggregate = mean of the repeats, selections from it, agreement in [0, 1]
    let mut done = 0;
    let (rep, st, _) = scan_repeated(&m, &data, &opts, &ro(3, ScoreKind::Margin), &mut |k| {
        done += k
    })
    .unwrap();
    assert_eq!(done, 3 * 300);
    let st = st.unwrap();
    assert_eq!(st.repeats, 3);
    assert_eq!(st.seeds.len(), 3);
    assert_eq!(st.seeds[0], 0);
    assert!((0.0..=1.0).contains(&st.common_share), "{st:?}");
    assert!(st.min_common_share <= st.common_share);
    assert!((-1.0..=1.0).contains(&st.kendall_tau));
    let mut spread = 0.0;
    for c in &rep {
        let s = c.stability.as_ref().unwrap();
        assert_eq!(s.score_std.len(), c.channels);
        spread += s.score_std.iter().sum::<f32>();
        assert_eq!(c.selected.len(), c.channels / 4);
        // the selection is the lowest aggregate margins
        let worst_kept = (0..c.channels)
            .filter(|i| !c.selected.contains(i))
            .map(|i| c.margin[i])
            .fold(f32::INFINITY, f32::min);
        for &s in &c.selected {
            assert!(c.margin[s] <= worst_kept, "{}: {s}", c.name);
        }
    }
    // different images and noise per repeat: the margins must differ somewhere
    assert!(spread > 0.0);
    assert_eq!(rep[0].scores.len(), plain[0].scores.len());
}
