//! Whole-model checks on the GPU: a width-64 PreActResNet18 (random weights, with non-trivial
//! batchnorm statistics) on CUDA against the same model on the CPU reference: eval forward and
//! conv taps, input-gradient backward (dense and one-hot cotangents, several depths), and a
//! training step's forward/backward. Plus an ignored throughput measurement used by
//! scripts/device-check.sh. Skips with a printed reason when there is no usable GPU.
mod gpu_support;

use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::Backend;
use fmp_engine::model::{Cotangent, ModelConfig, PreActResNet18};
use gpu_support::*;

/// Normalised tolerance for whole-model forward outputs (continuous in the inputs: 20 convs of
/// fp32 accumulation in another order).
const TOL_MODEL: f64 = 2e-3;
/// Gradients through ReLU masks (see `assert_close_masked`): relative L2 and max/scale bounds.
const TOL_GRAD_L2: f64 = 3e-2;
const TOL_GRAD_MAX: f64 = 0.25;

/// The same width-64 CIFAR-10 model on the CPU and on the backend under test.
fn models(test: &str) -> Option<(PreActResNet18, PreActResNet18)> {
    let g = gpu_arc(test)?;
    let cpu: Arc<dyn Backend> = Arc::new(cpu());
    let cfg = ModelConfig::cifar10(64);
    let base = PreActResNet18::new_random(cpu.clone(), cfg.clone(), 7).unwrap();
    let mut sd = base.to_state_dict().unwrap();
    // Make eval-mode batchnorm non-trivial (fresh models have mean 0, var 1, gamma 1, beta 0).
    let mut r = Rng::new(11);
    for (name, t) in sd.tensors.iter_mut() {
        let n = t.data.len();
        if name.ends_with("running_mean") || name.ends_with(".bias") && name.contains("bn") {
            t.data = r.nonzero(n, -0.2, 0.2);
        } else if name.ends_with("running_var") {
            t.data = r.vec(n, 0.5, 2.0);
        } else if name.ends_with(".weight") && name.contains("bn") {
            t.data = r.vec(n, 0.6, 1.4);
        }
    }
    let mc = PreActResNet18::from_state_dict(cpu, &sd, cfg.clone()).unwrap();
    let mg = PreActResNet18::from_state_dict(g, &sd, cfg).unwrap();
    Some((mc, mg))
}

fn input(b: &dyn Backend, n: usize, seed: u64) -> fmp_engine::Tensor {
    let x = Rng::new(seed).vec(n * 3 * 32 * 32, 0.0, 1.0);
    up(b, &x, &[n, 3, 32, 32])
}

#[test]
fn gpu_model_forward_matches_cpu() {
    let Some((mc, mg)) = models("gpu_model_forward_matches_cpu") else {
        return;
    };
    let taps = [0usize, 5, 9, 14, 19];
    let (lc, tc) = mc
        .forward_taps(&input(&**mc.backend(), 5, 1), &taps)
        .unwrap();
    let (lg, tg) = mg
        .forward_taps(&input(&**mg.backend(), 5, 1), &taps)
        .unwrap();
    assert_close(
        "logits",
        &down(&**mg.backend(), &lg),
        &down(&**mc.backend(), &lc),
        TOL_MODEL,
    );
    for (i, c) in taps.iter().enumerate() {
        let what = format!("tap conv {c} ({})", mc.convs()[*c].name);
        assert_close(
            &what,
            &down(&**mg.backend(), &tg[i]),
            &down(&**mc.backend(), &tc[i]),
            TOL_MODEL,
        );
    }
    // forward() agrees with forward_taps() on the GPU.
    let l2 = mg.forward(&input(&**mg.backend(), 5, 1)).unwrap();
    assert_close(
        "forward vs forward_taps",
        &down(&**mg.backend(), &l2),
        &down(&**mg.backend(), &lg),
        1e-6,
    );
}

#[test]
fn gpu_model_input_grad_matches_cpu() {
    let Some((mc, mg)) = models("gpu_model_input_grad_matches_cpu") else {
        return;
    };
    let b = 3usize;
    for upto in [0usize, 6, 7, 12, 19] {
        let run = |m: &PreActResNet18| {
            let be = &**m.backend();
            let tr = m.forward_trace(&input(be, b, 2), upto).unwrap();
            let shape = tr.tap().shape().to_vec();
            let cot = Rng::new(30 + upto as u64).nonzero(shape.iter().product(), -1.0, 1.0);
            let cot = up(be, &cot, &shape);
            let dx = m.input_grad(&tr, Cotangent::Full(&cot)).unwrap();
            // One-hot: K = 4 channels (the last four), group = B, the FRG scan's stacking.
            let (c, h, w) = (shape[1], shape[2], shape[3]);
            let k = 4usize;
            let seed = Rng::new(60 + upto as u64).nonzero(k * b * h * w, -1.0, 1.0);
            let seed = up(be, &seed, &[k * b, 1, h, w]);
            let dx1 = m
                .input_grad(
                    &tr,
                    Cotangent::OneHot {
                        seed: &seed,
                        first_channel: c - k,
                        group: b,
                    },
                )
                .unwrap();
            (down(be, tr.tap()), down(be, &dx), down(be, &dx1))
        };
        let (tc, dc, oc) = run(&mc);
        let (tg, dg, og) = run(&mg);
        let name = &mc.convs()[upto].name;
        assert_close(
            &format!("trace tap conv {upto} ({name})"),
            &tg,
            &tc,
            TOL_MODEL,
        );
        assert_close_masked(
            &format!("input_grad dense from conv {upto} ({name})"),
            &dg,
            &dc,
            TOL_GRAD_L2,
            TOL_GRAD_MAX,
        );
        assert_close_masked(
            &format!("input_grad one-hot from conv {upto} ({name})"),
            &og,
            &oc,
            TOL_GRAD_L2,
            TOL_GRAD_MAX,
        );
    }
}

#[test]
fn gpu_model_train_step_matches_cpu() {
    let Some((mut mc, mut mg)) = models("gpu_model_train_step_matches_cpu") else {
        return;
    };
    let n = 6usize;
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 10).collect();
    let step = |m: &mut PreActResNet18| {
        let be = m.backend().clone();
        let x = input(&*be, n, 3);
        let (logits, tr) = m.forward_train(&x).unwrap();
        let lab = be.indices_from_host(&labels).unwrap();
        let mut loss = be.zeros(&[n]).unwrap();
        let mut dl = be.zeros(logits.shape()).unwrap();
        be.softmax_cross_entropy(&logits, &lab, &mut loss, &mut dl)
            .unwrap();
        let g = m.backward_train(&tr, &dl).unwrap();
        let grads: Vec<(String, Vec<f32>)> = g
            .iter()
            .map(|(k, t)| (k.to_string(), be.to_host(t).unwrap()))
            .collect();
        let sd = m.to_state_dict().unwrap();
        (
            be.to_host(&logits).unwrap(),
            be.to_host(&loss).unwrap(),
            grads,
            sd,
        )
    };
    let (lc, sc, gc, sdc) = step(&mut mc);
    let (lg, sg, gg, sdg) = step(&mut mg);
    assert_close("train logits", &lg, &lc, TOL_MODEL);
    assert_close("train loss", &sg, &sc, TOL_MODEL);
    assert_eq!(gc.len(), gg.len());
    for ((name, c), (_, g)) in gc.iter().zip(&gg) {
        assert_close_masked(&format!("grad {name}"), g, c, TOL_GRAD_L2, TOL_GRAD_MAX);
    }
    // Running statistics updated the same way.
    for (name, t) in &sdc.tensors {
        if name.contains("running_") {
            assert_close(
                &format!("state {name}"),
                &sdg.tensors[name].data,
                &t.data,
                TOL_MODEL,
            );
        }
    }
}

/// Engine throughput at width 64 (run by scripts/device-check.sh: `--ignored --exact
/// gpu_model_throughput --nocapture`; batches from FMP_THROUGHPUT_BATCHES, default 128).
/// Same three measurements as benches/peers/model_throughput.py.
#[test]
#[ignore]
fn gpu_model_throughput() {
    let Some(g) = gpu_arc("gpu_model_throughput") else {
        return;
    };
    let batches: Vec<usize> = std::env::var("FMP_THROUGHPUT_BATCHES")
        .unwrap_or_else(|_| "128".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let iters: usize = std::env::var("FMP_THROUGHPUT_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut m = PreActResNet18::new_random(g.clone(), ModelConfig::cifar10(64), 1).unwrap();
    println!(
        "engine on {}, PreActResNet18 width 64, {iters} iterations (median of 3)",
        g.name()
    );
    println!(
        "{:>5} {:>14} {:>17} {:>17}",
        "batch", "forward img/s", "input_grad img/s", "train_step img/s"
    );
    let last = m.convs().len() - 1;
    for &n in &batches {
        let x = input(&*g, n, 5);
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        let lab = g.indices_from_host(&labels).unwrap();
        let time = |f: &mut dyn FnMut()| {
            f(); // warm-up
            g.synchronize().unwrap();
            let mut v: Vec<f64> = (0..3)
                .map(|_| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        f();
                    }
                    g.synchronize().unwrap();
                    t0.elapsed().as_secs_f64() / iters as f64
                })
                .collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            n as f64 / v[1]
        };
        let fwd = time(&mut || {
            m.forward(&x).unwrap();
        });
        // Eval forward to the last conv, then the input gradient from a dense cotangent there
        // (the head is negligible): the FRG scan's backward.
        let tr0 = m.forward_trace(&x, last).unwrap();
        let cot = g.zeros(tr0.tap().shape()).unwrap();
        drop(tr0);
        let ig = time(&mut || {
            let tr = m.forward_trace(&x, last).unwrap();
            m.input_grad(&tr, Cotangent::Full(&cot)).unwrap();
        });
        let train = time(&mut || {
            let (logits, tr) = m.forward_train(&x).unwrap();
            let mut loss = g.zeros(&[n]).unwrap();
            let mut dl = g.zeros(logits.shape()).unwrap();
            g.softmax_cross_entropy(&logits, &lab, &mut loss, &mut dl)
                .unwrap();
            m.backward_train(&tr, &dl).unwrap();
        });
        println!("{n:>5} {fwd:>14.0} {ig:>17.0} {train:>17.0}   img/s");
    }
}
