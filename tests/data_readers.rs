//! Dataset readers: synthetic files for layouts, bad sizes and bad labels; the real data under
//! FMP_DATA (or ../shared/data) when present, else those checks are skipped with a message.
use std::path::PathBuf;

use fmp_engine::data::{self, DatasetKind, Split, IMAGE_BYTES};
use fmp_engine::Error;

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("fmp_dt_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` records with `labels(i)` label bytes and pixel byte j of record i = (i * 7 + j) % 251.
fn records(n: usize, labels: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(labels(i));
        out.extend((0..IMAGE_BYTES).map(|j| ((i * 7 + j) % 251) as u8));
    }
    out
}

fn data_err(e: Error, needles: &[&str]) {
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Data { .. }),
        "expected Error::Data: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "'{n}' not in: {msg}");
    }
    println!("{msg}");
}

#[test]
fn cifar10_layout_detection_and_batches() {
    let t = TmpDir::new("c10");
    std::fs::write(
        t.0.join("data_batch_1.bin"),
        records(5, |i| vec![(i % 10) as u8]),
    )
    .unwrap();
    std::fs::write(
        t.0.join("data_batch_2.bin"),
        records(3, |i| vec![((i + 5) % 10) as u8]),
    )
    .unwrap();
    std::fs::write(
        t.0.join("test_batch.bin"),
        records(4, |i| vec![9 - i as u8]),
    )
    .unwrap();
    assert_eq!(data::detect(&t.0).unwrap(), DatasetKind::Cifar10);
    let tr = data::load_split(&t.0, None, Split::Train).unwrap();
    assert_eq!(tr.len(), 8);
    assert_eq!(tr.labels, vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(tr.num_classes, 10);
    let te = data::load_split(&t.0, None, Split::Test).unwrap();
    assert_eq!(te.labels, vec![9, 8, 7, 6]);
    // Batch layout: [n,3,32,32] in [0,1], CHW planes as stored.
    let b = te.batch_f32(&[2, 0]);
    assert_eq!(b.len(), 2 * IMAGE_BYTES);
    assert_eq!(b[0], ((2 * 7) % 251) as f32 / 255.0);
    assert_eq!(b[IMAGE_BYTES + 1024 + 5], ((1024 + 5) % 251) as f32 / 255.0);
    assert_eq!(te.range_f32(1, 2), te.batch_f32(&[1, 2]));
    let sub = te.subset(&[3, 1]);
    assert_eq!(sub.labels, vec![6, 8]);
    assert_eq!(sub.image(0), te.image(3));
}

#[test]
fn cifar100_uses_fine_labels_and_gtsrb_has_43_classes() {
    let t = TmpDir::new("c100");
    std::fs::write(
        t.0.join("train.bin"),
        records(3, |i| vec![(i * 3) as u8, (i * 40 + 1) as u8]),
    )
    .unwrap();
    std::fs::write(t.0.join("test.bin"), records(2, |i| vec![19, 99 - i as u8])).unwrap();
    assert_eq!(data::detect(&t.0).unwrap(), DatasetKind::Cifar100);
    let tr = data::load_split(&t.0, None, Split::Train).unwrap();
    assert_eq!((tr.labels.clone(), tr.num_classes), (vec![1, 41, 81], 100));
    assert_eq!(tr.image(1)[0], 7, "pixels start after both label bytes");

    let g = TmpDir::new("gtsrb");
    std::fs::write(
        g.0.join("train_10k.bin"),
        records(4, |i| vec![(i * 14) as u8]),
    )
    .unwrap();
    std::fs::write(g.0.join("test_5k.bin"), records(2, |_| vec![42])).unwrap();
    assert_eq!(data::detect(&g.0).unwrap(), DatasetKind::Gtsrb);
    let tr = data::load_split(&g.0, None, Split::Train).unwrap();
    assert_eq!(
        (tr.labels.clone(), tr.num_classes),
        (vec![0, 14, 28, 42], 43)
    );
    // train.bin/test.bin told apart by record size.
    let a = TmpDir::new("gtsrb_plain");
    std::fs::write(a.0.join("test.bin"), records(3, |_| vec![5])).unwrap();
    assert_eq!(data::detect(&a.0).unwrap(), DatasetKind::Gtsrb);
    assert_eq!("GTSRB".parse::<DatasetKind>().unwrap(), DatasetKind::Gtsrb);
    assert_eq!(DatasetKind::Cifar100.mean_std().1, [0.2673, 0.2564, 0.2762]);
}

#[test]
fn bad_sizes_and_labels_name_file_and_record() {
    let t = TmpDir::new("bad");
    let p = t.0.join("test_batch.bin");
    let mut r = records(3, |_| vec![1]);
    r.truncate(r.len() - 10);
    std::fs::write(&p, &r).unwrap();
    data_err(
        data::read_file(&p, DatasetKind::Cifar10).unwrap_err(),
        &["test_batch.bin", "3073", "record 2"],
    );
    std::fs::write(&p, records(4, |i| vec![if i == 2 { 10 } else { 0 }])).unwrap();
    data_err(
        data::read_file(&p, DatasetKind::Cifar10).unwrap_err(),
        &["test_batch.bin", "record 2", "label 10"],
    );
    std::fs::write(&p, []).unwrap();
    data_err(
        data::read_file(&p, DatasetKind::Cifar10).unwrap_err(),
        &["empty"],
    );
    let q = t.0.join("g.bin");
    std::fs::write(&q, records(2, |i| vec![43 * i as u8])).unwrap();
    data_err(
        data::read_file(&q, DatasetKind::Gtsrb).unwrap_err(),
        &["g.bin", "record 1", "label 43"],
    );
    let c = t.0.join("c.bin");
    std::fs::write(&c, records(2, |i| vec![0, if i == 1 { 100 } else { 3 }])).unwrap();
    data_err(
        data::read_file(&c, DatasetKind::Cifar100).unwrap_err(),
        &["record 1", "label 100"],
    );
    std::fs::write(&c, records(1, |_| vec![20, 3])).unwrap();
    data_err(
        data::read_file(&c, DatasetKind::Cifar100).unwrap_err(),
        &["record 0", "coarse label 20"],
    );
    let empty = TmpDir::new("empty");
    data_err(data::detect(&empty.0).unwrap_err(), &["no dataset found"]);
    data_err(
        data::load_split(&t.0, Some(DatasetKind::Gtsrb), Split::Train).unwrap_err(),
        &["gtsrb"],
    );
}

fn real(sub: &str) -> Option<PathBuf> {
    let root = data::data_root()?;
    let p = root.join(sub);
    p.is_dir().then_some(p)
}

fn skip(what: &str) {
    println!("SKIP {what}: real data not found (set FMP_DATA or provide ../shared/data)");
}

#[test]
fn real_cifar10() {
    let Some(dir) = real("cifar10") else {
        return skip("real_cifar10");
    };
    let te = data::load_split(&dir, None, Split::Test).unwrap();
    assert_eq!(te.len(), 10_000);
    // Record order is interleaved by class (see the data README).
    assert!(te
        .labels
        .iter()
        .enumerate()
        .all(|(i, l)| *l as usize == i % 10));
    let counts = (0..10)
        .map(|c| te.labels.iter().filter(|l| **l == c).count())
        .collect::<Vec<_>>();
    assert_eq!(counts, vec![1000; 10]);
    let tr = data::load_split(&dir, None, Split::Train).unwrap();
    assert!(tr.len() >= 10_000 && tr.len() % 10_000 == 0);
    // The lossless sample holds the first 20 images of the original CIFAR-10 test order.
    if let Some(l20) = real("cifar10-lossless20") {
        let s = data::read_file(&l20.join("test_first20.bin"), DatasetKind::Cifar10).unwrap();
        assert_eq!(s.len(), 20);
        assert_eq!(s.labels[..10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    }
}

#[test]
fn real_gtsrb_and_cifar100_sample() {
    let Some(g) = real("gtsrb-small") else {
        return skip("real_gtsrb_and_cifar100_sample");
    };
    assert_eq!(data::detect(&g).unwrap(), DatasetKind::Gtsrb);
    let tr = data::load_split(&g, None, Split::Train).unwrap();
    let te = data::load_split(&g, None, Split::Test).unwrap();
    assert_eq!((tr.len(), te.len(), tr.num_classes), (10_000, 5_000, 43));
    assert!(tr.labels.iter().any(|l| *l == 42) && tr.labels.iter().any(|l| *l == 0));
    if let Some(c) = real("cifar100-sample") {
        assert_eq!(data::detect(&c).unwrap(), DatasetKind::Cifar100);
        let te = data::load_split(&c, None, Split::Test).unwrap();
        assert_eq!((te.len(), te.num_classes), (20, 100));
        // CIFAR-100 test record 0 is fine class 49 (mountain).
        let names = std::fs::read_to_string(c.join("fine_label_names.txt")).unwrap();
        let name = names
            .split_whitespace()
            .nth(te.labels[0] as usize)
            .unwrap_or("");
        assert_eq!(name, "mountain");
    }
}
