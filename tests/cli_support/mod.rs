//! Shared by the tests that run the `fmp-engine` binary on made-up data.
#![allow(dead_code)]
use std::path::Path;
use std::process::{Command, Output};

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
    let out = Command::new(env!("CARGO_BIN_EXE_fmp-engine"))
        .args(args)
        .current_dir(cwd)
        .env_remove("FMP_DATA")
        .env("FMP_OFFLINE", "1")
        .output()
        .unwrap();
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
