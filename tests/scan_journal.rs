//! Long scans lose nothing and span machines: `scan` journals every finished conv next to `--out`,
//! `scan --resume` continues after SIGKILL to the report an uninterrupted scan writes, and refuses the
//! journal of another scan; `scan --shard I/N` + `merge` give the unsharded report; shards are balanced by
//! counted cost and cover every feature map once. Width-8 models and a random 40-image dataset made here.
mod cli_support;

use std::path::Path;
use std::time::{Duration, Instant};

use cli_support::*;
use fmp_engine::fmp::journal::{channel_costs, shard_slices, PartialScan};

const SCAN: &[&str] = &["--data", "data", "--device", "cpu", "--samples", "4"];

fn scan(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["scan", "w.safetensors", "--out", out];
    args.extend_from_slice(SCAN);
    args.extend_from_slice(extra);
    run_in(dir, &args)
}

fn ok(o: &std::process::Output) -> String {
    let (out, err) = text(o);
    assert!(o.status.success(), "failed:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    out
}

/// A report as JSON with the wall-clock field zeroed (everything else must match exactly).
fn report(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["seconds"] = 0.into();
    v
}

fn setup(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    width8(&dir.join("w.safetensors"));
    tiny_cifar(&dir.join("data"), 40, 8);
    dir
}

#[test]
fn shards_merge_to_the_unsharded_report() {
    let dir = setup("scan_shards");
    ok(&scan(&dir, "full.json", &[]));
    assert!(!dir.join("full.json.journal.json").exists(), "journal left");
    for i in 1..=3 {
        let out = ok(&scan(
            &dir,
            &format!("part{i}.json"),
            &["--shard", &format!("{i}/3")],
        ));
        assert!(out.contains(&format!("shard {i}/3")), "{out}");
    }
    ok(&run_in(
        &dir,
        &[
            "merge",
            "part1.json",
            "part3.json",
            "part2.json",
            "--out",
            "merged.json",
        ],
    ));
    assert_eq!(
        report(&dir.join("full.json")),
        report(&dir.join("merged.json"))
    );

    // merge refuses a missing shard, a shard given twice, and a part of a different scan
    let bad = |args: &[&str], want: &str| {
        let o = run_in(&dir, args);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.join("bad.json").exists());
    };
    bad(
        &["merge", "part1.json", "part2.json", "--out", "bad.json"],
        "a shard is missing",
    );
    bad(
        &[
            "merge",
            "part1.json",
            "part2.json",
            "part3.json",
            "part2.json",
            "--out",
            "bad.json",
        ],
        "scored twice",
    );
    ok(&scan(
        &dir,
        "seed1.json",
        &["--shard", "3/3", "--seed", "1"],
    ));
    bad(
        &[
            "merge",
            "part1.json",
            "part2.json",
            "seed1.json",
            "--out",
            "bad.json",
        ],
        "seed: 0 vs 1",
    );
    bad(
        &["merge", "full.json", "--out", "bad.json"],
        "not a partial scan",
    );
}

#[test]
fn resume_after_sigkill_gives_the_uninterrupted_report() {
    let dir = setup("scan_resume");
    ok(&scan(&dir, "ref.json", &[]));

    let journal = dir.join("r.json.journal.json");
    let mut args = vec!["scan", "w.safetensors", "--out", "r.json"];
    args.extend_from_slice(SCAN);
    let mut child = std::process::Command::new(BIN)
        .args(&args)
        .current_dir(&dir)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL) once the journal holds a few convs but before the end.
    let t0 = Instant::now();
    let done_at_kill = loop {
        if let Ok(p) = PartialScan::load(&journal) {
            if p.done.len() >= 3 {
                child.kill().unwrap();
                break p.done.len();
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the scan ended before it could be killed"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no journal written"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.wait().unwrap();
    assert!(!dir.join("r.json").exists(), "killed scan wrote a report");
    let p = PartialScan::load(&journal).expect("journal readable after SIGKILL");
    assert!(
        p.done.len() >= done_at_kill && !p.complete,
        "{} done",
        p.done.len()
    );

    // Without --resume, or with other settings, the journal is refused and left alone.
    let (_, err) = text(&scan(&dir, "r.json", &[]));
    assert!(err.contains("--resume"), "{err}");
    let o = scan(&dir, "r.json", &["--resume", "--seed", "1"]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("different scan") && err.contains("seed"),
        "{err}"
    );
    let o = scan(&dir, "r.json", &["--resume", "--shard", "1/2"]);
    assert!(
        !o.status.success(),
        "resumed a whole-scan journal as a shard"
    );
    assert!(journal.exists() && !dir.join("r.json").exists());

    let out = ok(&scan(&dir, "r.json", &["--resume"]));
    assert!(out.contains("resuming the scan from"), "{out}");
    assert!(
        !journal.exists(),
        "journal left after the report was written"
    );
    assert_eq!(report(&dir.join("ref.json")), report(&dir.join("r.json")));
}

#[test]
fn shards_cover_every_map_once_and_balance_cost() {
    let m = fmp_engine::model::PreActResNet18::new_random(
        cpu(),
        fmp_engine::model::ModelConfig::cifar10(8),
        0,
    )
    .unwrap();
    let costs = channel_costs(&m, 32).unwrap();
    let layout: Vec<usize> = m.convs().iter().map(|c| c.params.c_out as usize).collect();
    let total: u64 = layout.iter().zip(&costs).map(|(&c, &k)| c as u64 * k).sum();
    let max_one = *costs.iter().max().unwrap();
    for n in [1usize, 2, 3, 5, 8, 13] {
        let mut seen: Vec<Vec<u32>> = layout.iter().map(|&c| vec![0; c]).collect();
        for i in 1..=n {
            let sl = shard_slices(&m, 32, i, n).unwrap();
            let cost: u64 = sl
                .iter()
                .map(|s| (s.end - s.start) as u64 * costs[s.conv])
                .sum();
            // within one channel's cost of an even split
            let even = total as f64 / n as f64;
            assert!(
                (cost as f64 - even).abs() <= max_one as f64,
                "shard {i}/{n}: cost {cost} vs even {even:.0}"
            );
            for s in sl {
                seen[s.conv][s.start..s.end]
                    .iter_mut()
                    .for_each(|k| *k += 1);
            }
        }
        assert!(seen.iter().flatten().all(|&k| k == 1), "N = {n}");
    }
    assert!(shard_slices(&m, 32, 0, 3).is_err());
    assert!(shard_slices(&m, 32, 4, 3).is_err());
}

/// The scan variants of issue 11 go through the journal too: `--steps 2 --score margin` sharded and
/// merged gives the whole scan's report, which selects as `stability::scan_repeated` (one repeat) does
/// in-process; the identity tells parts with other steps apart; `--repeats` > 1 refuses --shard/--resume.
#[test]
fn steps_and_score_variants_shard_and_merge_like_a_whole_scan() {
    use fmp_engine::fmp::frg::ScanOptions;
    use fmp_engine::fmp::pipeline::{load_clean, load_model};
    use fmp_engine::fmp::select::ScanReport;
    use fmp_engine::fmp::stability::{scan_repeated, Aggregate, RepeatOptions, ScoreKind};

    let dir = setup("scan_variants");
    let var = ["--steps", "2", "--score", "margin"];
    ok(&scan(&dir, "full.json", &var));
    for i in 1..=2 {
        let mut extra = var.to_vec();
        let shard = format!("{i}/2");
        extra.extend(["--shard", &shard]);
        ok(&scan(&dir, &format!("part{i}.json"), &extra));
    }
    let j = engine_json(
        &dir,
        &[
            "merge",
            "part2.json",
            "part1.json",
            "--out",
            "merged.json",
            "--json",
        ],
    );
    assert_eq!(j["parts"], serde_json::json!(["part2.json", "part1.json"]));
    assert_eq!(j["settings"]["steps"], 2);
    assert_eq!(j["settings"]["score"], "margin");
    assert_eq!(
        report(&dir.join("full.json")),
        report(&dir.join("merged.json"))
    );

    let r = ScanReport::load(&dir.join("full.json")).unwrap();
    assert_eq!(
        (
            r.settings.steps,
            r.settings.score.as_str(),
            r.settings.repeats
        ),
        (2, "margin", 1)
    );
    let (clean, kind) = load_clean(&dir.join("data")).unwrap();
    let model = load_model(cpu(), &dir.join("w.safetensors"), kind).unwrap();
    let opts = ScanOptions {
        p: 8,
        steps: 2,
        ..ScanOptions::default()
    };
    let ro = RepeatOptions {
        samples: 4,
        repeats: 1,
        score: ScoreKind::Margin,
        aggregate: Aggregate::Mean,
    };
    let (convs, stability, _) = scan_repeated(&model, &clean, &opts, &ro, &mut |_| {}).unwrap();
    assert!(stability.is_none());
    assert_eq!(convs.len(), r.convs.len());
    for (a, b) in convs.iter().zip(&r.convs) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.scores, b.scores, "{}", a.name);
        assert_eq!(a.margin, b.margin, "{}", a.name);
        assert_eq!(a.selected, b.selected, "{}", a.name);
    }

    // a part with a different step count is another scan
    ok(&scan(
        &dir,
        "steps1.json",
        &["--score", "margin", "--shard", "2/2"],
    ));
    let o = run_in(
        &dir,
        &["merge", "part1.json", "steps1.json", "--out", "bad.json"],
    );
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("steps: 2 vs 1"),
        "{err}"
    );
    assert!(!dir.join("bad.json").exists());

    // --repeats > 1 is not journaled: --shard and --resume are refused, naming both flags
    for extra in [
        &["--repeats", "2", "--shard", "1/2"][..],
        &["--repeats", "2", "--resume"],
    ] {
        let o = scan(&dir, "rep.json", extra);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(
            err.contains("--repeats 2") && err.contains(extra[2]),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.join("rep.json").exists());
    // and a whole --repeats 2 scan runs, writing no journal behind it
    ok(&scan(&dir, "rep.json", &["--repeats", "2"]));
    assert!(ScanReport::load(&dir.join("rep.json"))
        .unwrap()
        .stability
        .is_some());
    assert!(!dir.join("rep.json.journal.json").exists());
}
