//! Concurrent use and Ctrl-C: two processes writing one kernel-cache entry never leave or read a torn
//! entry; a second run given the same `--out` fails at once with a clear message while the first finishes;
//! Ctrl-C (SIGINT) stops `scan` and `train` at the next safe point, exits 130, says what it kept, and the
//! kept journal / checkpoint resumes.
mod cli_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;
use fmp_engine::backend::gpu::kernel_cache;
use fmp_engine::fmp::checkpoint::Checkpoint;
use fmp_engine::fmp::journal::PartialScan;

const ROLE: &str = "FMP_CONCURRENCY_CHILD";

fn payload() -> Vec<u8> {
    (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect()
}

/// Child half of `kernel_cache_survives_two_writers` (runs only when spawned by it).
#[test]
fn kernel_cache_child() {
    let Ok(dir) = std::env::var(ROLE) else { return };
    let k = kernel_cache::key(&[b"shared kernel", b"-arch=sm_90"]);
    let path = kernel_cache::entry_path(Path::new(&dir), "conv", "sm_90", &k);
    let want = payload();
    let mut stored = false;
    for _ in 0..150 {
        match kernel_cache::load(&path, &k) {
            Some(p) => assert!(p == want, "read a wrong payload"),
            None => assert!(!stored, "entry vanished or torn after a store"),
        }
        kernel_cache::store(&path, &k, &want).unwrap();
        stored = true;
    }
}

#[test]
fn kernel_cache_survives_two_writers() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let dir = scratch("kernel_cache_two");
    let me = std::env::current_exe().unwrap();
    let kids: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(&me)
                .args(["kernel_cache_child", "--exact", "--nocapture"])
                .env(ROLE, &dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    let k = kernel_cache::key(&[b"shared kernel", b"-arch=sm_90"]);
    let path = kernel_cache::entry_path(&dir, "conv", "sm_90", &k);
    assert!(kernel_cache::load(&path, &k).unwrap() == payload());
    assert_eq!(files_under(&dir).len(), 1, "{:?}", files_under(&dir));
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: ended too early"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "{what}: timed out");
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Send SIGINT, as Ctrl-C in a terminal does.
#[cfg(unix)]
fn sigint(child: &Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(r, 0, "kill(SIGINT) failed");
}

const SCAN: [&str; 10] = [
    "scan",
    "w.safetensors",
    "--data",
    "data",
    "--device",
    "cpu",
    "--samples",
    "4",
    "--out",
    "r.json",
];

#[test]
fn same_out_twice_the_second_run_refuses() {
    let dir = scratch("same_out");
    width8(&dir.join("w.safetensors"));
    tiny_cifar(&dir.join("data"), 40, 8);
    let mut first = spawn(&dir, &SCAN);
    wait_until(&mut first, "first scan", || {
        dir.join("r.json.lock").exists()
    });
    let second = run_in(&dir, &SCAN);
    let (_, err) = text(&second);
    assert!(
        !second.status.success(),
        "second run over the same --out succeeded"
    );
    assert!(err.contains("another fmp-engine run is writing"), "{err}");
    assert!(!err.contains("panicked"));
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(dir.join("r.json")).unwrap();
    let r: fmp_engine::fmp::select::ScanReport = serde_json::from_str(&text).unwrap();
    assert_eq!(r.totals.feature_maps, 600);
    assert!(!dir.join("r.json.lock").exists(), "lock left");
    assert!(!dir.join("r.json.journal.json").exists(), "journal left");
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_scan_and_train_and_keeps_their_state() {
    let dir = scratch("ctrl_c");
    width8(&dir.join("w.safetensors"));
    tiny_cifar(&dir.join("data"), 64, 8);

    // scan: stops after the current conv, keeps the journal, resumes
    let journal = dir.join("r.json.journal.json");
    let mut child = spawn(&dir, &SCAN);
    wait_until(&mut child, "scan", || {
        PartialScan::load(&journal)
            .map(|p| p.done.len() >= 2)
            .unwrap_or(false)
    });
    sigint(&child);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted by Ctrl-C") && err.contains("Kept: the journal"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    let p = PartialScan::load(&journal).unwrap();
    assert!(!p.complete && !dir.join("r.json").exists());
    let mut resume = SCAN.to_vec();
    resume.push("--resume");
    let o = run_in(&dir, &resume);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(dir.join("r.json").exists());

    // train: stops after the current epoch, keeps the checkpoint, resumes
    let train = [
        "train",
        "--data",
        "data",
        "--device",
        "cpu",
        "--attack",
        "badnets",
        "--width",
        "8",
        "--epochs",
        "12",
        "--batch",
        "16",
        "--eval-limit",
        "8",
        "--out",
        "t.safetensors",
    ];
    let ckpt = dir.join("t.safetensors.ckpt.safetensors");
    let mut child = spawn(&dir, &train);
    wait_until(&mut child, "train", || {
        Checkpoint::load(&ckpt)
            .map(|c| c.epoch() >= 2)
            .unwrap_or(false)
    });
    sigint(&child);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("Kept: the checkpoint"), "{err}");
    let e = Checkpoint::load(&ckpt).unwrap().epoch();
    assert!(e < 12 && !dir.join("t.safetensors").exists(), "epoch {e}");
    let mut resume = train.to_vec();
    resume.push("--resume");
    let o = run_in(&dir, &resume);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(dir.join("t.safetensors").exists() && !ckpt.exists());
}
