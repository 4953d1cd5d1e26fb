//! `train` and `finetune` keep a per-epoch checkpoint (weights, BN statistics, momentum buffers, RNG state,
//! batch order, epoch); killed with SIGKILL mid-way and resumed with `--resume`, they end with weights
//! bit-identical to an uninterrupted run. A checkpoint of different settings is refused, and a plain run
//! does not overwrite one. Width 8, 96 random images made here.
mod cli_support;

use std::path::Path;
use std::time::{Duration, Instant};

use cli_support::*;
use fmp_engine::fmp::checkpoint::Checkpoint;

fn ok(o: &std::process::Output) -> String {
    let (out, err) = text(o);
    assert!(o.status.success(), "failed:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    out
}

/// Run `args` (which write `out`) to the end; then again, killed after its checkpoint reaches epoch 3;
/// then check the refusals, resume, and compare the two outputs byte for byte.
fn kill_and_resume(dir: &Path, args: &[&str], out: &str, changed: &[&str], what: &str) {
    let with_out = |o: &str| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--out".to_string(), o.to_string()]);
        v
    };
    let reference = format!("ref-{out}");
    let a = with_out(&reference);
    ok(&run_in(
        dir,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(!dir.join(format!("{reference}.ckpt.safetensors")).exists());

    let a = with_out(out);
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let ckpt = dir.join(format!("{out}.ckpt.safetensors"));
    let mut child = std::process::Command::new(BIN)
        .args(&argv)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if Checkpoint::load(&ckpt)
            .map(|c| c.epoch() >= 3)
            .unwrap_or(false)
        {
            child.kill().unwrap();
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what} ended before it could be killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    assert!(!dir.join(out).exists(), "killed run wrote its output");
    let epoch = Checkpoint::load(&ckpt)
        .expect("checkpoint readable after SIGKILL")
        .epoch();
    assert!(epoch >= 3, "{epoch}");

    // a plain run refuses to start over the checkpoint; a resume with other settings is refused
    let o = run_in(dir, &argv);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("--resume"), "{err}");
    let mut other = argv.clone();
    other.extend_from_slice(changed);
    other.push("--resume");
    let o = run_in(dir, &other);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("different"), "{err}");
    assert!(ckpt.exists() && !dir.join(out).exists());

    let mut resume = argv.clone();
    resume.push("--resume");
    let text_out = ok(&run_in(dir, &resume));
    assert!(
        text_out.contains(&format!("resuming {what} from")),
        "{text_out}"
    );
    assert!(
        !ckpt.exists(),
        "checkpoint left after the output was written"
    );
    let (x, y) = (
        std::fs::read(dir.join(&reference)).unwrap(),
        std::fs::read(dir.join(out)).unwrap(),
    );
    assert!(
        x == y,
        "{what}: resumed weights differ from the uninterrupted run's"
    );
}

#[test]
fn train_and_finetune_resume_to_identical_weights() {
    let dir = scratch("train_resume");
    tiny_cifar(&dir.join("data"), 96, 8);
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
        "10",
        "--batch",
        "16",
        "--eval-limit",
        "8",
    ];
    kill_and_resume(&dir, &train, "t.safetensors", &["--lr", "0.05"], "training");
    let finetune = [
        "finetune",
        "ref-t.safetensors",
        "--data",
        "data",
        "--device",
        "cpu",
        "--epochs",
        "10",
        "--batch",
        "16",
        "--ratio",
        "1",
    ];
    kill_and_resume(
        &dir,
        &finetune,
        "f.safetensors",
        &["--ft-seed", "4"],
        "fine-tuning",
    );
}
