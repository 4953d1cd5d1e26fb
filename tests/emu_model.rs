//! Whole width-8 PreActResNet18 through the emulated CUDA kernels against the CPU backend, using
//! the PyTorch fixture weights: eval logits and every conv output, input gradients from dense and
//! one-hot (batched FRG-style) cotangents at several depths, and one training step (batch-stat
//! BN forward/backward, weight gradients). `cargo test --features emu emu`.
#![cfg(feature = "emu")]

use std::path::PathBuf;
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::gpu::emu::EmuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::model::{Cotangent, ModelConfig, PreActResNet18};
use fmp_engine::weights::{self, StateDict};

fn fixture_sd() -> StateDict {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preact8.safetensors");
    weights::load(&p).unwrap().0
}

fn models() -> (
    Arc<dyn Backend>,
    PreActResNet18,
    Arc<dyn Backend>,
    PreActResNet18,
) {
    let sd = fixture_sd();
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let emu: Arc<dyn Backend> = Arc::new(EmuBackend::emulated(3));
    let mc = PreActResNet18::from_state_dict(cpu.clone(), &sd, ModelConfig::cifar10(8)).unwrap();
    let me = PreActResNet18::from_state_dict(emu.clone(), &sd, ModelConfig::cifar10(8)).unwrap();
    (cpu, mc, emu, me)
}

fn input(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n * 3 * 32 * 32)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// max |a - b| / max |b|.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    assert!(
        err / scale < tol,
        "{what}: emu vs cpu relative error {:.3e} >= {tol:.0e}",
        err / scale
    );
}

#[test]
fn emu_model_forward_and_input_grad_match_cpu() {
    let (cpu, mc, emu, me) = models();
    let x = input(2, 42);
    let (xc, xe) = (
        cpu.from_host(&x, &[2, 3, 32, 32]).unwrap(),
        emu.from_host(&x, &[2, 3, 32, 32]).unwrap(),
    );
    let taps: Vec<usize> = (0..mc.convs().len()).collect();
    let (lc, oc) = mc.forward_taps(&xc, &taps).unwrap();
    let (le, oe) = me.forward_taps(&xe, &taps).unwrap();
    check(
        "logits",
        &emu.to_host(&le).unwrap(),
        &cpu.to_host(&lc).unwrap(),
        1e-4,
    );
    for ((c, a), b) in mc.convs().iter().zip(&oe).zip(&oc) {
        check(
            &format!("conv {}", c.name),
            &emu.to_host(a).unwrap(),
            &cpu.to_host(b).unwrap(),
            1e-4,
        );
    }

    // input gradients at the stem, a downsampling conv1, a shortcut and the deepest conv
    let names: Vec<String> = mc.convs().iter().map(|c| c.name.clone()).collect();
    let mut picks = vec![0usize, names.len() - 1];
    picks.extend(names.iter().position(|n| n.contains("shortcut")));
    picks.extend(names.iter().position(|n| n == "layer3.0.conv1"));
    for k in picks {
        let (tc, te) = (
            mc.forward_trace(&xc, k).unwrap(),
            me.forward_trace(&xe, k).unwrap(),
        );
        let shape = tc.tap().shape().to_vec();
        let cot = input(
            shape.iter().product::<usize>() / (3 * 32 * 32) + 1,
            7 + k as u64,
        );
        let cot: Vec<f32> = cot[..shape.iter().product()]
            .iter()
            .map(|v| v - 0.5)
            .collect();
        let (cc, ce) = (
            cpu.from_host(&cot, &shape).unwrap(),
            emu.from_host(&cot, &shape).unwrap(),
        );
        let gc = mc.input_grad(&tc, Cotangent::Full(&cc)).unwrap();
        let ge = me.input_grad(&te, Cotangent::Full(&ce)).unwrap();
        check(
            &format!("input grad (dense) at {}", names[k]),
            &emu.to_host(&ge).unwrap(),
            &cpu.to_host(&gc).unwrap(),
            1e-4,
        );

        // one-hot: 3 channels x the 2 traced samples, stacked channel-major
        let (h, w) = (shape[2], shape[3]);
        let seed: Vec<f32> = cot.iter().cycle().take(6 * h * w).copied().collect();
        let (sc, se) = (
            cpu.from_host(&seed, &[6, 1, h, w]).unwrap(),
            emu.from_host(&seed, &[6, 1, h, w]).unwrap(),
        );
        let first = shape[1] - 3;
        let gc = mc
            .input_grad(
                &tc,
                Cotangent::OneHot {
                    seed: &sc,
                    first_channel: first,
                    group: 2,
                },
            )
            .unwrap();
        let ge = me
            .input_grad(
                &te,
                Cotangent::OneHot {
                    seed: &se,
                    first_channel: first,
                    group: 2,
                },
            )
            .unwrap();
        check(
            &format!("input grad (one-hot) at {}", names[k]),
            &emu.to_host(&ge).unwrap(),
            &cpu.to_host(&gc).unwrap(),
            1e-4,
        );
    }
}

#[test]
fn emu_model_training_step_matches_cpu() {
    let (cpu, mut mc, emu, mut me) = models();
    let x = input(3, 9);
    let (xc, xe) = (
        cpu.from_host(&x, &[3, 3, 32, 32]).unwrap(),
        emu.from_host(&x, &[3, 3, 32, 32]).unwrap(),
    );
    let (lc, trc) = mc.forward_train(&xc).unwrap();
    let (le, tre) = me.forward_train(&xe).unwrap();
    check(
        "train logits",
        &emu.to_host(&le).unwrap(),
        &cpu.to_host(&lc).unwrap(),
        1e-4,
    );
    let labels = [1u32, 7, 3];
    let (ic, ie) = (
        cpu.indices_from_host(&labels).unwrap(),
        emu.indices_from_host(&labels).unwrap(),
    );
    let (mut lossc, mut losse) = (cpu.zeros(&[3]).unwrap(), emu.zeros(&[3]).unwrap());
    let (mut dlc, mut dle) = (cpu.zeros(&[3, 10]).unwrap(), emu.zeros(&[3, 10]).unwrap());
    cpu.softmax_cross_entropy(&lc, &ic, &mut lossc, &mut dlc)
        .unwrap();
    emu.softmax_cross_entropy(&le, &ie, &mut losse, &mut dle)
        .unwrap();
    check(
        "train loss",
        &emu.to_host(&losse).unwrap(),
        &cpu.to_host(&lossc).unwrap(),
        1e-4,
    );
    let gc = mc.backward_train(&trc, &dlc).unwrap();
    let ge = me.backward_train(&tre, &dle).unwrap();
    assert_eq!(gc.len(), ge.len());
    let mut checked = 0;
    for (name, tc) in gc.iter() {
        let te = ge
            .get(name)
            .unwrap_or_else(|| panic!("emu grads lack {name}"));
        check(
            &format!("grad {name}"),
            &emu.to_host(te).unwrap(),
            &cpu.to_host(tc).unwrap(),
            2e-3,
        );
        checked += 1;
    }
    assert!(checked > 40, "only {checked} gradients");
    // updated running statistics
    let (sc, se) = (mc.to_state_dict().unwrap(), me.to_state_dict().unwrap());
    for k in sc.keys().filter(|k| k.contains("running_")) {
        check(k, &se.get(k).unwrap().data, &sc.get(k).unwrap().data, 1e-4);
    }
}
