//! CPU throughput of the full-width (64) PreActResNet18 at batch 32 (ignored by default: run with
//! `cargo test --release --test model_throughput -- --ignored --nocapture`; set FMP_TP_WIDTH/
//! FMP_TP_BATCH/FMP_TP_ITERS to change). Prints images/s for the eval forward and a training
//! step's forward+backward (weight gradients, no optimizer step), like benches/peers/model_throughput.py.
use std::sync::Arc;
use std::time::Instant;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::model::{ModelConfig, PreActResNet18};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore]
fn cpu_throughput_full_width() {
    let (w, n, iters) = (
        env("FMP_TP_WIDTH", 64),
        env("FMP_TP_BATCH", 32),
        env("FMP_TP_ITERS", 3),
    );
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut model = PreActResNet18::new_random(be.clone(), ModelConfig::cifar10(w), 1).unwrap();
    let mut rng = fmp_engine::rng::Rng::stream(fmp_engine::rng::Stream::Init, 2);
    let xs: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.uniform_f64() as f32)
        .collect();
    let x = be.from_host(&xs, &[n, 3, 32, 32]).unwrap();
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let lab = be.indices_from_host(&labels).unwrap();
    model.forward(&x).unwrap(); // warm-up
    let t0 = Instant::now();
    for _ in 0..iters {
        be.to_host(&model.forward(&x).unwrap()).unwrap();
    }
    let fwd = (n * iters) as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..iters {
        let (logits, tr) = model.forward_train(&x).unwrap();
        let mut loss = be.zeros(&[n]).unwrap();
        let mut dl = be.zeros(logits.shape()).unwrap();
        be.softmax_cross_entropy(&logits, &lab, &mut loss, &mut dl)
            .unwrap();
        let g = model.backward_train(&tr, &dl).unwrap();
        be.to_host(&g.tensors[0]).unwrap();
    }
    let train = (n * iters) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "{}: width {w} batch {n}: forward {fwd:.1} img/s, train forward+backward {train:.1} img/s",
        be.name()
    );
}
