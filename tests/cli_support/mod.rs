//! Fixtures for tests that drive the built binary: a scratch folder, a tiny CIFAR-10-layout dataset
//! written in the test (random images and labels, so no real data is needed), width-8 models, and a
//! runner that captures exit status and output.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::fmp::rng::Rng;
use fmp_engine::model::{ModelConfig, PreActResNet18};

pub const BIN: &str = env!("CARGO_BIN_EXE_fmp-engine");

/// A fresh, empty scratch folder under the target dir (removed first if a previous run left it).
pub fn scratch(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    base
}

/// `n` CIFAR-10 records (label byte + 3072 pixels) with labels 0..10 and seeded random pixels.
pub fn cifar_records(n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(n * 3073);
    for i in 0..n {
        out.push((i % 10) as u8);
        out.extend((0..3072).map(|_| (r.next_u64() & 0xff) as u8));
    }
    out
}

/// A CIFAR-10 folder with `train` training and `test` test records.
pub fn tiny_cifar(dir: &Path, train: usize, test: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("data_batch_1.bin"), cifar_records(train, 1)).unwrap();
    std::fs::write(dir.join("test_batch.bin"), cifar_records(test, 2)).unwrap();
    dir.to_path_buf()
}

pub fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

/// A random width-`w` model for `cfg` saved at `path`.
pub fn save_model(path: &Path, cfg: ModelConfig, seed: u64) -> PreActResNet18 {
    let m = PreActResNet18::new_random(cpu(), cfg, seed).unwrap();
    m.save(path).unwrap();
    m
}

pub fn width8(path: &Path) -> PreActResNet18 {
    save_model(path, ModelConfig::cifar10(8), 3)
}

/// Run the binary in `cwd` with `args` (on the CPU, threads capped).
pub fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("FMP_DATA")
        .output()
        .expect("run fmp-engine")
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Files (recursively, relative) under `dir`.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
    }
    out.sort();
    out
}
