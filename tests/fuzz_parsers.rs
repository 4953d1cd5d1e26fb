//! Byte-mutation property tests of every parser of user files: safetensors weights (`weights::load`, with
//! the model checks), dataset records (`data::parse_records`), scan reports (`ScanReport::load`), prune
//! masks (`PruneMask::load`), partial scans / journals (`PartialScan::load`) and training checkpoints
//! (`Checkpoint::load`). Each starts from a valid file, applies random mutations (bit flips, overwritten
//! runs, truncation, insertion, a random 8-byte length at the start), and asserts: no panic (an `Err` is
//! fine), and no single allocation larger than a small multiple of the input's size, so no length read
//! from the file is trusted before it is checked against the file's size (the test binary's global
//! allocator records the largest request of the current thread).
//!
//! Bounded for CI: 64 cases per target by default; `PROPTEST_CASES=N` runs longer.
mod cli_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use cli_support::*;
use fmp_engine::data::{parse_records, DatasetKind};
use fmp_engine::fmp::checkpoint::Checkpoint;
use fmp_engine::fmp::journal::PartialScan;
use fmp_engine::fmp::prune::PruneMask;
use fmp_engine::fmp::select::ScanReport;
use fmp_engine::model::ModelConfig;
use proptest::prelude::*;

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new)));
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Run `f`, returning the largest single allocation it made on this thread.
fn largest_alloc(f: impl FnOnce()) -> usize {
    LARGEST.with(|m| m.set(0));
    f();
    LARGEST.with(|m| m.get())
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Overwrite(usize, Vec<u8>),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Length(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => prop_oneof![any::<u64>(), 0u64..4096, Just(u64::MAX)].prop_map(Mutation::Length),
    ]
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match m {
            Mutation::Flip(i, x) => b[i % n] ^= x,
            Mutation::Overwrite(i, v) => {
                for (j, x) in v.iter().enumerate() {
                    let k = (i % n + j) % n;
                    b[k] = *x;
                }
            }
            Mutation::Truncate(i) => b.truncate(i % n),
            Mutation::Insert(i, v) => {
                let at = i % (n + 1);
                b.splice(at..at, v.iter().cloned());
            }
            Mutation::Length(v) => {
                let k = n.min(8);
                b[..k].copy_from_slice(&v.to_le_bytes()[..k]);
            }
        }
    }
    b
}

struct Seeds {
    dir: PathBuf,
    weights: Vec<u8>,
    records: Vec<u8>,
    report: Vec<u8>,
    mask: Vec<u8>,
    partial: Vec<u8>,
    checkpoint: Vec<u8>,
}

/// Valid example files, made once (a width-2 model keeps them small).
fn seeds() -> &'static Seeds {
    static S: std::sync::OnceLock<Seeds> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch("fuzz_parsers");
        let w = dir.join("w.safetensors");
        save_model(&w, ModelConfig::cifar10(2), 1);
        tiny_cifar(&dir.join("data"), 6, 2);
        // A real scan, shard, journal and checkpoint, made by the binary.
        let s = |args: &[&str]| {
            let o = run_in(&dir, args);
            assert!(o.status.success(), "{:?}: {}", args, text(&o).1);
        };
        let scan = [
            "scan",
            "w.safetensors",
            "--data",
            "data",
            "--device",
            "cpu",
            "--samples",
            "2",
        ];
        s(&[&scan[..], &["--out", "r.json"]].concat());
        s(&[&scan[..], &["--out", "part.json", "--shard", "2/3"]].concat());
        s(&[
            "prune",
            "w.safetensors",
            "--report",
            "r.json",
            "--out",
            "p.safetensors",
            "--mask",
            "--device",
            "cpu",
        ]);
        // `train` removes its checkpoint when it ends: make one with the library's loop instead.
        let checkpoint = {
            use fmp_engine::fmp::train::{
                sgd_epochs_resumable, Checkpointing, LoopState, SgdOptions,
            };
            let mut m =
                fmp_engine::model::PreActResNet18::new_random(cpu(), ModelConfig::cifar10(2), 2)
                    .unwrap();
            let data = fmp_engine::fmp::LabeledImages {
                pixels: cifar_records(6, 3)
                    .chunks(3073)
                    .flat_map(|r| r[1..].to_vec())
                    .collect(),
                labels: (0..6).map(|i| i % 10).collect(),
                num_classes: 10,
            };
            let opts = SgdOptions {
                epochs: 1,
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 0.0,
                batch: 3,
                eta_min: 0.0,
                augment: true,
                seed: 0,
            };
            let path = dir.join("ck.safetensors");
            let ident = fmp_engine::fmp::checkpoint::sgd_identity(&opts);
            let mut save = |m: &fmp_engine::model::PreActResNet18, st: &LoopState| {
                fmp_engine::fmp::checkpoint::save(&path, m, st, &ident)
            };
            sgd_epochs_resumable(
                &mut m,
                &data,
                &opts,
                None,
                &mut |_| {},
                Some(Checkpointing {
                    resume: None,
                    save: &mut save,
                }),
            )
            .unwrap();
            std::fs::read(&path).unwrap()
        };
        let rd = |n: &str| std::fs::read(dir.join(n)).unwrap();
        Seeds {
            weights: rd("w.safetensors"),
            records: rd("data/data_batch_1.bin"),
            report: rd("r.json"),
            mask: rd("p.safetensors.mask.json"),
            partial: rd("part.json"),
            checkpoint,
            dir,
        }
    })
}

/// Write `bytes` to a per-thread file and run `parse` on it; check the allocation bound.
fn check_file(name: &str, bytes: &[u8], parse: impl FnOnce(&Path)) {
    let p = seeds()
        .dir
        .join(format!("{name}-{:?}", std::thread::current().id()));
    std::fs::write(&p, bytes).unwrap();
    let largest = largest_alloc(|| parse(&p));
    let bound = 8 * bytes.len() + (1 << 16);
    assert!(
        largest <= bound,
        "{name}: a {largest}-byte allocation for a {}-byte input",
        bytes.len()
    );
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn weights_loader(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(&seeds().weights, &muts);
        check_file("weights", &b, |p| {
            if let Ok((mut sd, _)) = fmp_engine::weights::load(p) {
                if let Ok((w, k)) = fmp_engine::weights::infer_dims(&sd, p) {
                    let _ = fmp_engine::weights::validate(&mut sd, p, w, k);
                }
            }
        });
    }

    #[test]
    fn dataset_records(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(&seeds().records, &muts);
        for kind in [DatasetKind::Cifar10, DatasetKind::Cifar100, DatasetKind::Gtsrb] {
            let largest = largest_alloc(|| {
                let _ = parse_records(Path::new("fuzz.bin"), &b, kind);
            });
            prop_assert!(largest <= 2 * b.len() + (1 << 16), "{largest} for {}", b.len());
        }
    }

    #[test]
    fn scan_report(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(&seeds().report, &muts);
        check_file("report", &b, |p| { let _ = ScanReport::load(p); });
    }

    #[test]
    fn prune_mask(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(&seeds().mask, &muts);
        check_file("mask", &b, |p| { let _ = PruneMask::load(p); });
    }

    #[test]
    fn partial_scan(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(&seeds().partial, &muts);
        check_file("partial", &b, |p| {
            if let Ok(part) = PartialScan::load(p) {
                let _ = fmp_engine::fmp::journal::merge(&[part], &["p".into()]);
            }
        });
    }

    #[test]
    fn training_checkpoint(muts in proptest::collection::vec(mutation(), 1..6)) {
        let b = apply(&seeds().checkpoint, &muts);
        check_file("ckpt", &b, |p| {
            if let Ok(c) = Checkpoint::load(p) {
                if let Ok(m) = fmp_engine::model::PreActResNet18::from_state_dict(
                    cpu(),
                    &c.weights,
                    ModelConfig::cifar10(2),
                ) {
                    let _ = c.loop_state(&m, p);
                }
            }
        });
    }
}

/// The mutations do reach the parsers' error paths (a fuzz test that only ever fed valid files would
/// prove nothing): a handful of fixed mutations must each be rejected.
#[test]
fn mutations_are_rejected() {
    // the allocation tracker sees a large request
    let big = largest_alloc(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(10_000_000))));
    assert!(big >= 10_000_000, "{big}");
    let s = seeds();
    let trunc = apply(&s.weights, &[Mutation::Truncate(s.weights.len() / 3)]);
    check_file("w-trunc", &trunc, |p| {
        assert!(fmp_engine::weights::load(p).is_err())
    });
    let huge = apply(&s.weights, &[Mutation::Length(u64::MAX)]);
    check_file("w-huge", &huge, |p| {
        assert!(fmp_engine::weights::load(p).is_err())
    });
    let rep = apply(&s.report, &[Mutation::Truncate(s.report.len() / 2)]);
    check_file("r-trunc", &rep, |p| assert!(ScanReport::load(p).is_err()));
    let part = apply(&s.partial, &[Mutation::Truncate(s.partial.len() - 2)]);
    check_file("p-trunc", &part, |p| assert!(PartialScan::load(p).is_err()));
    let ck = apply(&s.checkpoint, &[Mutation::Length(1 << 40)]);
    check_file("c-huge", &ck, |p| assert!(Checkpoint::load(p).is_err()));
    let rec = apply(&s.records, &[Mutation::Truncate(100)]);
    assert!(parse_records(Path::new("x"), &rec, DatasetKind::Cifar10).is_err());
}
