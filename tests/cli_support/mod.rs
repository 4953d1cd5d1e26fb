//! Fixtures for tests that drive the built binary: a scratch folder, tiny CIFAR-10-layout datasets
//! written in the test (random or patterned images, so no real data is needed), width-8 models, and
//! runners that capture exit status and output (offline: no run ever downloads).
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
        .env("FMP_OFFLINE", "1")
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

/// A CIFAR-10 look-alike folder: `n_train` / `n_test` records, labels i % 10, pixels a fixed pattern.
pub fn tiny_dataset(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, n) in [("data_batch_1.bin", n_train), ("test_batch.bin", n_test)] {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.push((i % 10) as u8);
            bytes.extend((0..3072).map(|j| ((i * 37 + j * 11) % 251) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Run the engine in `cwd` (offline, no `FMP_DATA`); the run must succeed.
pub fn engine(cwd: &Path, args: &[&str]) -> Output {
    let out = run_in(cwd, args);
    assert!(
        out.status.success(),
        "{args:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `engine` with `--json`: stdout must be exactly one line of JSON; returns it parsed.
pub fn engine_json(cwd: &Path, args: &[&str]) -> serde_json::Value {
    let out = engine(cwd, args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "{args:?}: stdout must hold only the JSON:\n{stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}\n{stdout}"))
}
