//! `Backend::empty` hands out recycled buffers with stale contents, so every op that takes one
//! must write all of it. With the recycler's poison on (every buffer NaN-filled), the eval
//! forward, the batched FRG scan on every downsampling and last conv (strided and 4x4 convs
//! included), the training forward/backward and an SGD step must give bitwise the results they
//! give with it off, and finite ones: an element an op leaves unwritten would come out NaN.
//!
//! One test only: the poison switch is process-wide.
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::fmp::frg::{make_x0, scan_range, ConvScan, ScanOptions};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::model::{ModelConfig, PreActResNet18, SgdState};
use fmp_engine::tensor::recycle;

const B: usize = 3;

/// Everything the model computes from one fixed input, as host vectors.
fn run_all() -> Vec<Vec<f32>> {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut model = PreActResNet18::new_random(be.clone(), ModelConfig::cifar10(8), 3).unwrap();
    let mut r = Rng::new(5);
    let x: Vec<f32> = (0..B * 3072).map(|_| r.uniform()).collect();
    let xt = be.from_host(&x, &[B, 3, 32, 32]).unwrap();
    let x0t = be
        .from_host(&make_x0(&x, 1.0 / 255.0, 1), &[B, 3, 32, 32])
        .unwrap();
    let labels = vec![1u32, 4, 7];
    let mut out = vec![be.to_host(&model.forward(&xt).unwrap()).unwrap()];
    for l in [0, 5, 6, 11, 15, 19] {
        let cs = ConvScan {
            model: &model,
            x: &xt,
            x0: &x0t,
            labels: &labels,
            layer: l,
        };
        let opts = ScanOptions {
            eps: 4.0 / 255.0,
            ..ScanOptions::default()
        };
        let s = scan_range(cs, cs.all_channels().unwrap(), &opts, 2, &mut |_| {}).unwrap();
        out.push(s.true_prob);
        out.push(s.margin);
    }
    let (logits, trace) = model.forward_train(&xt).unwrap();
    out.push(be.to_host(&logits).unwrap());
    let dl: Vec<f32> = (0..B * 10).map(|i| (i as f32 * 0.37).sin()).collect();
    let dlt = be.from_host(&dl, &[B, 10]).unwrap();
    let grads = model.backward_train(&trace, &dlt).unwrap();
    for (_, g) in grads.iter() {
        out.push(be.to_host(g).unwrap());
    }
    let mut state = SgdState::new();
    model.sgd_step(&grads, &mut state, 0.1, 0.9, 5e-4).unwrap();
    out.push(be.to_host(&model.forward(&xt).unwrap()).unwrap());
    out
}

#[test]
fn ops_overwrite_every_element_of_empty_outputs() {
    recycle::set_poison(false);
    let clean = run_all();
    recycle::set_poison(true);
    let poisoned = run_all();
    recycle::set_poison(false);
    assert_eq!(clean.len(), poisoned.len());
    for (i, (a, b)) in clean.iter().zip(&poisoned).enumerate() {
        assert!(
            b.iter().all(|v| v.is_finite()),
            "output {i}: non-finite with poison"
        );
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same && a.len() == b.len(), "output {i} differs with poison");
    }
}
