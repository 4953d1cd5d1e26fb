//! Ad-hoc CPU throughput of the full-width PreActResNet18 (issue 2's report numbers):
//! `cargo test --release --test cpu_model_throughput -- --ignored --nocapture`.
//! MODEL_BATCH (default 32) and MODEL_WIDTH (default 64) change the shape.
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
fn model_images_per_second() {
    let (n, width) = (env("MODEL_BATCH", 32), env("MODEL_WIDTH", 64));
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut model = PreActResNet18::new_random(be.clone(), ModelConfig::cifar10(width), 1).unwrap();
    let xs: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let x = be.from_host(&xs, &[n, 3, 32, 32]).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let lab = be.indices_from_host(&labels).unwrap();
    let time = |f: &mut dyn FnMut()| {
        f();
        let (t0, mut reps) = (Instant::now(), 0);
        while reps < 2 || t0.elapsed().as_secs_f64() < 3.0 {
            f();
            reps += 1;
        }
        t0.elapsed().as_secs_f64() / reps as f64
    };
    let tf = time(&mut || {
        model.forward(&x).unwrap();
    });
    let tt = time(&mut || {
        let (logits, trace) = model.forward_train(&x).unwrap();
        let mut loss = be.zeros(&[n]).unwrap();
        let mut dl = be.zeros(logits.shape()).unwrap();
        be.softmax_cross_entropy(&logits, &lab, &mut loss, &mut dl)
            .unwrap();
        model.backward_train(&trace, &dl).unwrap();
    });
    println!(
        "PreActResNet18 width {width} batch {n} on {}: eval forward {:.1} img/s ({:.0} ms), train forward+backward {:.1} img/s ({:.0} ms)",
        be.name(),
        n as f64 / tf,
        tf * 1e3,
        n as f64 / tt,
        tt * 1e3
    );
}
