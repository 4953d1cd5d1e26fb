//! PyTorch parity of PreActResNet18 on the CPU backend against tests/fixtures (written by
//! tools/make_fixtures.py): logits, every conv output, input gradients from random cotangents
//! (dense and one-hot), and one training step's loss, weight gradients and running statistics.
use std::path::PathBuf;
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::model::{Cotangent, ModelConfig, PreActResNet18, SgdState};
use fmp_engine::weights::{self, StateDict};
use fmp_engine::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn setup() -> (Arc<dyn Backend>, PreActResNet18, StateDict) {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let (sd, info) = weights::load(fixture("preact8.safetensors")).unwrap();
    assert_eq!((info.width, info.num_classes), (8, 10));
    assert!(info.stripped_prefix.is_none());
    let model = PreActResNet18::from_state_dict(be.clone(), &sd, ModelConfig::cifar10(8)).unwrap();
    let (io, _) = weights::read_tensors(&fixture("preact8_io.safetensors")).unwrap();
    (be, model, io)
}

fn upload(be: &Arc<dyn Backend>, io: &StateDict, key: &str) -> Tensor {
    let t = io.get(key).unwrap_or_else(|| panic!("fixture key {key}"));
    be.from_host(&t.data, &t.shape).unwrap()
}

/// Convs with a stored PyTorch input gradient (`igrad.<name>`).
fn igrad_targets(io: &StateDict) -> Vec<String> {
    io.keys()
        .filter_map(|k| k.strip_prefix("igrad."))
        .map(str::to_string)
        .collect()
}

/// max |got - want| / max |want|: the error relative to the tensor's scale.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    err / scale
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    println!("{what:<40} rel err {e:.2e} (tol {tol:.0e})");
    assert!(e < tol, "{what}: relative error {e:.3e} >= {tol:.0e}");
}

#[test]
fn parity_eval_logits_and_every_conv() {
    let (be, model, io) = setup();
    let x = upload(&be, &io, "x");
    let taps: Vec<usize> = (0..model.convs().len()).collect();
    assert_eq!(taps.len(), 20);
    let (logits, outs) = model.forward_taps(&x, &taps).unwrap();
    check(
        "logits",
        &be.to_host(&logits).unwrap(),
        &io.get("logits").unwrap().data,
        2e-5,
    );
    for (c, t) in model.convs().iter().zip(&outs) {
        let want = io.get(&format!("conv.{}", c.name)).unwrap();
        assert_eq!(t.shape(), want.shape.as_slice(), "{}", c.name);
        check(
            &format!("conv.{}", c.name),
            &be.to_host(t).unwrap(),
            &want.data,
            1e-5,
        );
    }
    // forward() and a prefix trace agree with forward_taps.
    let l2 = be.to_host(&model.forward(&x).unwrap()).unwrap();
    assert_eq!(l2, be.to_host(&logits).unwrap());
    let k = model.conv_index("layer2.1.conv1").unwrap();
    let tr = model.forward_trace(&x, k).unwrap();
    assert_eq!(be.to_host(tr.tap()).unwrap(), be.to_host(&outs[k]).unwrap());
    for k in [0, 5, 19] {
        let t = model.forward_prefix(&x, k).unwrap();
        assert_eq!(
            be.to_host(&t).unwrap(),
            be.to_host(&outs[k]).unwrap(),
            "forward_prefix {k}"
        );
    }
}

#[test]
fn parity_input_grad_dense_cotangent() {
    let (be, model, io) = setup();
    let x = upload(&be, &io, "x");
    let targets = igrad_targets(&io);
    assert_eq!(
        targets.len(),
        5,
        "stem, conv1, shortcut, conv2 and the deepest conv"
    );
    for name in targets.iter().map(String::as_str) {
        let k = model.conv_index(name).unwrap();
        let tr = model.forward_trace(&x, k).unwrap();
        let cot = upload(&be, &io, &format!("cot.{name}"));
        let g = model.input_grad(&tr, Cotangent::Full(&cot)).unwrap();
        assert_eq!(g.shape(), [2, 3, 32, 32]);
        check(
            &format!("igrad.{name}"),
            &be.to_host(&g).unwrap(),
            &io.get(&format!("igrad.{name}")).unwrap().data,
            2e-5,
        );
    }
}

/// Input gradient at every conv (every role and depth) with the conv's own output as cotangent.
#[test]
fn parity_input_grad_every_conv() {
    let (be, model, io) = setup();
    let x = io.get("x").unwrap();
    let x1 = be
        .from_host(&x.data[..3 * 32 * 32], &[1, 3, 32, 32])
        .unwrap();
    for (k, c) in model.convs().iter().enumerate() {
        let tr = model.forward_trace(&x1, k).unwrap();
        let g = model.input_grad(&tr, Cotangent::Full(tr.tap())).unwrap();
        let want = io.get(&format!("igrad_self.{}", c.name)).unwrap();
        check(
            &format!("igrad_self.{}", c.name),
            &be.to_host(&g).unwrap(),
            &want.data,
            2e-5,
        );
    }
}

/// One-hot cotangents stacked (channel, sample) channel-major over a trace of batch B: each item
/// equals the dense backward of its one-hot expansion, and summed over all channels they give
/// PyTorch's gradient of the full cotangent (linearity).
#[test]
fn parity_input_grad_onehot_stacked() {
    let (be, model, io) = setup();
    let x = upload(&be, &io, "x");
    let targets = igrad_targets(&io);
    assert_eq!(
        targets.len(),
        5,
        "stem, conv1, shortcut, conv2 and the deepest conv"
    );
    for name in targets.iter().map(String::as_str) {
        let k = model.conv_index(name).unwrap();
        let tr = model.forward_trace(&x, k).unwrap();
        let cot = io.get(&format!("cot.{name}")).unwrap();
        let (bsz, c, h, w) = (cot.shape[0], cot.shape[1], cot.shape[2], cot.shape[3]);
        let hw = h * w;
        // All channels, in two chunks (first_channel 0 and c/2) to exercise the offset.
        let mut total = vec![0f64; bsz * 3 * 32 * 32];
        for (c0, kc) in [(0, c / 2), (c / 2, c - c / 2)] {
            let n = kc * bsz;
            let mut seed = vec![0f32; n * hw];
            let mut dense = vec![0f32; n * c * hw];
            for kk in 0..kc {
                for b in 0..bsz {
                    let i = kk * bsz + b;
                    let src = &cot.data[(b * c + c0 + kk) * hw..][..hw];
                    seed[i * hw..(i + 1) * hw].copy_from_slice(src);
                    dense[(i * c + c0 + kk) * hw..][..hw].copy_from_slice(src);
                }
            }
            let seed_t = be.from_host(&seed, &[n, 1, h, w]).unwrap();
            let dense_t = be.from_host(&dense, &[n, c, h, w]).unwrap();
            let g1 = be
                .to_host(
                    &model
                        .input_grad(
                            &tr,
                            Cotangent::OneHot {
                                seed: &seed_t,
                                first_channel: c0,
                                group: bsz,
                            },
                        )
                        .unwrap(),
                )
                .unwrap();
            let g2 = be
                .to_host(&model.input_grad(&tr, Cotangent::Full(&dense_t)).unwrap())
                .unwrap();
            check(&format!("onehot vs dense {name} @{c0}"), &g1, &g2, 1e-5);
            for (i, v) in g1.iter().enumerate() {
                let item = i / (3 * 32 * 32);
                total[(item % bsz) * 3 * 32 * 32 + i % (3 * 32 * 32)] += *v as f64;
            }
        }
        let total: Vec<f32> = total.into_iter().map(|v| v as f32).collect();
        check(
            &format!("sum of one-hot {name}"),
            &total,
            &io.get(&format!("igrad.{name}")).unwrap().data,
            2e-5,
        );
    }
}

#[test]
fn parity_train_step_grads_and_running_stats() {
    let (be, mut model, io) = setup();
    let x = upload(&be, &io, "train_x");
    let labels: Vec<u32> = io
        .get("train_labels")
        .unwrap()
        .data
        .iter()
        .map(|v| *v as u32)
        .collect();
    let (logits, trace) = model.forward_train(&x).unwrap();
    check(
        "train logits",
        &be.to_host(&logits).unwrap(),
        &io.get("train_logits").unwrap().data,
        2e-5,
    );
    let lab = be.indices_from_host(&labels).unwrap();
    let mut loss = be.zeros(&[labels.len()]).unwrap();
    let mut dlogits = be.zeros(logits.shape()).unwrap();
    be.softmax_cross_entropy(&logits, &lab, &mut loss, &mut dlogits)
        .unwrap();
    let mean_loss = be.to_host(&loss).unwrap().iter().sum::<f32>() / labels.len() as f32;
    check(
        "train loss",
        &[mean_loss],
        &io.get("train_loss").unwrap().data,
        1e-5,
    );
    let grads = model.backward_train(&trace, &dlogits).unwrap();
    assert_eq!(grads.len(), 20 + 2 * 16 + 2, "parameter count");
    let want_names: Vec<&String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(|_| k))
        .collect();
    assert_eq!(
        grads.len(),
        want_names.len(),
        "one gradient per PyTorch parameter"
    );
    for (name, g) in grads.iter() {
        let want = io
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("PyTorch has no parameter {name}"));
        assert_eq!(g.shape(), want.shape.as_slice(), "{name}");
        check(
            &format!("grad.{name}"),
            &be.to_host(g).unwrap(),
            &want.data,
            2e-5,
        );
    }
    let sd = model.to_state_dict().unwrap();
    for key in io.keys().filter(|k| k.starts_with("after.")) {
        let name = key.strip_prefix("after.").unwrap();
        check(
            key,
            &sd.get(name).unwrap().data,
            &io.get(key).unwrap().data,
            1e-5,
        );
    }
    assert_eq!(
        sd.get("layer1.0.bn1.num_batches_tracked").unwrap().data,
        vec![8.0]
    );
    // An SGD step moves the weights by exactly -lr * grad on the first step (buffers start at 0).
    let before = be.to_host(model.conv_weight(5)).unwrap();
    let name5 = format!("{}.weight", model.convs()[5].name);
    let g5 = be.to_host(grads.get(&name5).unwrap()).unwrap();
    let mut st = SgdState::new();
    model.sgd_step(&grads, &mut st, 0.1, 0.9, 0.0).unwrap();
    let after = be.to_host(model.conv_weight(5)).unwrap();
    let want: Vec<f32> = before.iter().zip(&g5).map(|(w, g)| w - 0.1 * g).collect();
    check("sgd step", &after, &want, 1e-6);
}

#[test]
fn state_dict_roundtrip_and_save() {
    let (_be, model, _io) = setup();
    let sd = model.to_state_dict().unwrap();
    let (orig, _) = weights::load(fixture("preact8.safetensors")).unwrap();
    assert_eq!(sd, orig);
    let dir = std::env::temp_dir().join(format!("fmp_model_rt_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.safetensors");
    model.save(&p).unwrap();
    let (back, _) = weights::load(&p).unwrap();
    assert_eq!(back, orig);
    let (raw, _) = weights::read_tensors(&p).unwrap();
    assert!(
        raw.int64_keys.contains("layer1.0.bn1.num_batches_tracked"),
        "counters saved as I64"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
