//! Baselines and controls: CLP selects a channel whose filter was scaled up (and, for a block's conv1, one
//! whose bn2 gain was), Fine-Pruning selects dead filters first, random selections have the asked counts,
//! are distinct and seeded, and the trigger diagnostic counts hits against the right chance level.
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::baselines::{
    channel_lipschitz, clp_selection, counts_of, fine_pruning_selection, oracle_selection,
    outliers, spectral_norm,
};
use fmp_engine::fmp::controls::{
    counts_for_p, random_selection, top_k, trigger_overlap, trigger_sensitivity,
};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::select::ConvReport;
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::{ModelConfig, PreActResNet18};

fn be() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn model(width: usize) -> PreActResNet18 {
    PreActResNet18::new_random(be(), ModelConfig::cifar10(width), 3).unwrap()
}

/// `m` with `f` applied to its state_dict.
fn edited(m: &PreActResNet18, f: impl Fn(&mut fmp_engine::weights::StateDict)) -> PreActResNet18 {
    let mut sd = m.to_state_dict().unwrap();
    f(&mut sd);
    PreActResNet18::from_state_dict(be(), &sd, m.config().clone()).unwrap()
}

fn images(n: usize) -> LabeledImages {
    let mut r = Rng::new(9);
    LabeledImages {
        pixels: (0..n * 3072).map(|_| r.below(256) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u32).collect(),
        num_classes: 10,
    }
}

#[test]
fn spectral_norm_and_outliers() {
    // diag(3, 1) padded: sigma_max 3; a rank-one 2x3 matrix u v^T has sigma = |u| |v|
    assert!((spectral_norm(&[3.0, 0.0, 0.0, 1.0], 2, 2) - 3.0).abs() < 1e-9);
    let s = spectral_norm(&[1.0, 2.0, 2.0, 2.0, 4.0, 4.0], 2, 3);
    assert!((s - 5f64.sqrt() * 3.0).abs() < 1e-9, "{s}");
    assert!((spectral_norm(&[3.0, 4.0], 2, 1) - 5.0).abs() < 1e-9);
    let mut v = vec![1.0f32; 20];
    v[7] = 10.0;
    assert_eq!(outliers(&v, 3.0), vec![7]);
    assert!(outliers(&[1.0; 20], 3.0).is_empty());
}

#[test]
fn clp_selects_a_scaled_channel() {
    let m = model(8);
    let base = clp_selection(&m, 3.0).unwrap();
    // scale output filter 5 of layer3.1.conv2 (a residual-stream conv: no BN factor) by 20
    let name = "layer3.1.conv2";
    let ci = m.conv_index(name).unwrap();
    let m2 = edited(&m, |sd| {
        let t = sd.get_mut(&format!("{name}.weight")).unwrap();
        let per = t.data.len() / t.shape[0];
        t.data[5 * per..6 * per].iter_mut().for_each(|v| *v *= 20.0);
    });
    let sel = clp_selection(&m2, 3.0).unwrap();
    assert!(sel.contains(&(ci, 5)), "{sel:?}");
    assert!(!base.contains(&(ci, 5)));
    // a block conv1's bound includes its bn2 gain: raising gamma of layer2.1.bn2 channel 3 selects it
    let c1 = m.conv_index("layer2.1.conv1").unwrap();
    let m3 = edited(&m, |sd| {
        sd.get_mut("layer2.1.bn2.weight").unwrap().data[3] = 50.0;
    });
    let lips = channel_lipschitz(&m3).unwrap();
    assert_eq!(lips.len(), 20);
    assert!(clp_selection(&m3, 3.0).unwrap().contains(&(c1, 3)));
    // u large: nothing is an outlier
    assert!(clp_selection(&m2, 100.0).unwrap().is_empty());
}

#[test]
fn fine_pruning_prunes_dead_filters_first() {
    let m = model(4);
    let name = "layer2.0.conv1";
    let ci = m.conv_index(name).unwrap();
    let m2 = edited(&m, |sd| {
        let t = sd.get_mut(&format!("{name}.weight")).unwrap();
        let per = t.data.len() / t.shape[0];
        t.data[6 * per..7 * per].iter_mut().for_each(|v| *v = 0.0);
    });
    let counts = counts_for_p(&m2, 4).unwrap();
    let sel = fine_pruning_selection(&m2, &images(6), &counts, 4).unwrap();
    assert_eq!(counts_of(&m2, &sel), counts);
    assert!(sel.contains(&(ci, 6)), "{sel:?}");
    // batch size does not change the result
    assert_eq!(
        fine_pruning_selection(&m2, &images(6), &counts, 6).unwrap(),
        sel
    );
}

#[test]
fn random_selection_counts_and_seeds() {
    let m = model(4);
    let counts = counts_for_p(&m, 2).unwrap();
    let a = random_selection(&m, &counts, 1).unwrap();
    assert_eq!(counts_of(&m, &a), counts);
    let mut d = a.clone();
    d.dedup();
    assert_eq!(d.len(), a.len());
    assert_eq!(a, random_selection(&m, &counts, 1).unwrap());
    assert_ne!(a, random_selection(&m, &counts, 2).unwrap());
    let mut too_many = counts.clone();
    too_many[0] = 99;
    assert!(random_selection(&m, &too_many, 1).is_err());
}

#[test]
fn trigger_diagnostic_counts_hits() {
    assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 2), vec![1, 3]);
    let conv = |sel: Vec<usize>, ch| ConvReport {
        index: 0,
        name: "c".into(),
        channels: ch,
        scores: vec![0.0; ch],
        true_prob: vec![0.0; ch],
        margin: vec![],
        selected: sel,
        stability: None,
    };
    let convs = vec![conv(vec![1, 2], 4), conv(vec![0], 2)];
    let sens = vec![vec![0.0, 5.0, 0.1, 3.0], vec![1.0, 0.0]];
    let at = Attack::new(AttackKind::BadNets, 0);
    let d = trigger_overlap(&convs, &sens, &at, 10).unwrap();
    // conv 0: top-2 = {1, 3}, selected {1, 2}: 1 hit; conv 1: top-1 = {0}: 1 hit
    assert_eq!((d.hits, d.selected), (2, 3));
    assert!((d.chance - (4.0 / 4.0 + 1.0 / 2.0)).abs() < 1e-12);
    // measured on a model: BadNets changes only the corner, so the stem's maps respond, and every
    // sensitivity is finite and non-negative
    let m = model(4);
    let s = trigger_sensitivity(&m, &images(3), &at, 2).unwrap();
    assert_eq!(s.len(), 20);
    assert!(s.iter().flatten().all(|v| v.is_finite() && *v >= 0.0));
    assert!(s[0].iter().any(|&v| v > 0.0));
    // the oracle takes each conv's count of its most sensitive maps: the diagnostic of its own
    // selection is all hits, and the counts are the asked ones
    let counts = counts_for_p(&m, 2).unwrap();
    let sel = oracle_selection(&m, &images(3), &at, &counts, 2).unwrap();
    assert_eq!(counts_of(&m, &sel), counts);
    let d = fmp_engine::fmp::controls::trigger_overlap_pairs(&sel, &s, &at, 3).unwrap();
    assert_eq!((d.hits, d.selected), (sel.len(), sel.len()));
    assert!(oracle_selection(&m, &images(3), &at, &counts[..3], 2).is_err());
}
