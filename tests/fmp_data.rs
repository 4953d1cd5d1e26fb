//! `data cifar10` download path against a loopback HTTP server serving a small archive: success with the
//! right MD5 (the folder loads as CIFAR-10), a wrong MD5 or a 404 is a clear error and leaves nothing behind.
//! The automatic path: a subcommand run with no dataset anywhere downloads into the cache (progress lines,
//! MD5 checked) and goes on; `--offline` / `FMP_OFFLINE=1` refuse without a connection and say what to do.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fmp_engine::data::{load_split, Split};
use fmp_engine::fmp::download::{fetch_cifar10, md5_file, CIFAR10_DIR};

/// A cifar-10-binary.tar.gz look-alike: `n` records per file, labels i % 10.
fn archive(n: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for name in ["data_batch_1.bin", "test_batch.bin"] {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.push((i % 10) as u8);
            bytes.extend((0..3072).map(|j| ((i * 31 + j) % 256) as u8));
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("{CIFAR10_DIR}/{name}"), bytes.as_slice())
            .unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

/// Serve `body` at /cifar.tar.gz (404 elsewhere) for `requests` connections; returns the base URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().take(requests) {
            let mut s = stream.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            if line.starts_with("GET /cifar.tar.gz ") {
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .unwrap();
                s.write_all(&body).unwrap();
            } else {
                s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
            }
        }
    });
    format!("http://{addr}")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fmp-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn download_verify_unpack_from_loopback() {
    let body = archive(20);
    let cache = tmp("ok");
    let arch = cache.with_extension("tar.gz");
    std::fs::write(&arch, &body).unwrap();
    let md5 = md5_file(&arch).unwrap();
    let url = serve(body, 1);
    let mut calls = 0;
    let dir = fetch_cifar10(
        &format!("{url}/cifar.tar.gz"),
        &md5,
        &cache,
        None,
        &mut |_, _| calls += 1,
    )
    .unwrap();
    assert_eq!(dir, cache.join(CIFAR10_DIR));
    assert!(calls > 0);
    let test = load_split(&dir, None, Split::Test).unwrap();
    assert_eq!(test.len(), 20);
    assert_eq!(test.labels[13], 3);
    assert_eq!(test.images[5 * 3072 + 7], ((5 * 31 + 7) % 256) as u8);
    // only the dataset folder remains in the cache (no partial download, no staging folder)
    let names: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(CIFAR10_DIR)]);
    // the same archive given locally (--archive) also unpacks
    let cache2 = tmp("local");
    let dir2 = fetch_cifar10("unused", &md5, &cache2, Some(&arch), &mut |_, _| {}).unwrap();
    assert_eq!(load_split(&dir2, None, Split::Train).unwrap().len(), 20);
    for d in [&cache, &cache2] {
        std::fs::remove_dir_all(d).unwrap();
    }
    std::fs::remove_file(&arch).unwrap();
}

#[test]
fn wrong_checksum_and_missing_file_are_clear_errors() {
    let url = serve(archive(3), 2);
    let cache = tmp("bad");
    let e = fetch_cifar10(
        &format!("{url}/cifar.tar.gz"),
        "00000000000000000000000000000000",
        &cache,
        None,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("nothing was unpacked"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "partial files left behind"
    );
    let e = fetch_cifar10(
        &format!("{url}/nope.tar.gz"),
        "0",
        &cache,
        None,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("could not download") && e.contains("404") && e.contains("--archive"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// The engine binary run in `cwd` (whose `../shared/data` does not exist) with no dataset configured: no
/// `FMP_DATA`, the cache in `cache`, downloads from `url` with checksum `md5`.
fn engine_without_data(cwd: &Path, cache: &Path, url: &str, md5: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmp-engine"))
        .args(args)
        .current_dir(cwd)
        .env_remove("FMP_DATA")
        .env_remove("FMP_OFFLINE")
        .env("FMP_CACHE", cache)
        .env("FMP_CIFAR10_URL", url)
        .env("FMP_CIFAR10_MD5", md5)
        .output()
        .unwrap()
}

#[test]
fn subcommand_downloads_missing_cifar10_and_goes_on() {
    let body = archive(20);
    let root = tmp("auto");
    let (cwd, cache) = (root.join("work"), root.join("cache"));
    std::fs::create_dir_all(&cwd).unwrap();
    let arch = root.join("a.tar.gz");
    std::fs::write(&arch, &body).unwrap();
    let md5 = md5_file(&arch).unwrap();
    // one request only: the second run must find the cache and not download again
    let url = format!("{}/cifar.tar.gz", serve(body, 1));
    let train = [
        "train",
        "--attack",
        "none",
        "--out",
        "m.safetensors",
        "--width",
        "2",
        "--epochs",
        "1",
        "--limit",
        "20",
        "--eval-limit",
        "20",
        "--batch",
        "10",
        "--device",
        "cpu",
    ];
    let out = engine_without_data(&cwd, &cache, &url, &md5, &train);
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{err}");
    assert!(err.contains("downloading CIFAR-10"), "{err}");
    // progress lines (not a terminal): bytes, percentage, rate, ETA; the last one at 100%
    assert!(
        err.contains("100%") && err.contains("MB/s") && err.contains("ETA"),
        "{err}"
    );
    assert!(err.contains("MD5 verified"), "{err}");
    assert!(
        stdout.contains("training PreActResNet18 width 2 on 20 cifar10 images"),
        "{stdout}"
    );
    assert!(cwd.join("m.safetensors").is_file());
    let test = load_split(&cache.join(CIFAR10_DIR), None, Split::Test).unwrap();
    assert_eq!(test.len(), 20);
    let names: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(CIFAR10_DIR)]);
    // again: the cache is found, nothing is downloaded (the server would refuse a second connection)
    let out = engine_without_data(&cwd, &cache, &url, &md5, &train);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("downloading"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn offline_refuses_to_download_and_says_how_to_point_at_data() {
    let root = tmp("offline");
    let (cwd, cache) = (root.join("work"), root.join("cache"));
    std::fs::create_dir_all(&cwd).unwrap();
    // scan checks that WEIGHTS can be opened before it looks for data (issue 12); the data lookup
    // fails before the file is read as a model
    std::fs::write(cwd.join("m.safetensors"), b"never loaded").unwrap();
    // a listener that must see no connection
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}/cifar.tar.gz", l.local_addr().unwrap());
    let md5 = "00000000000000000000000000000000";
    let flag = engine_without_data(
        &cwd,
        &cache,
        &url,
        md5,
        &["scan", "m.safetensors", "--offline", "--device", "cpu"],
    );
    let env = Command::new(env!("CARGO_BIN_EXE_fmp-engine"))
        .args(["demo", "--device", "cpu"])
        .current_dir(&cwd)
        .env_remove("FMP_DATA")
        .env("FMP_OFFLINE", "1")
        .env("FMP_CACHE", &cache)
        .env("FMP_CIFAR10_URL", &url)
        .output()
        .unwrap();
    let data = engine_without_data(&cwd, &cache, &url, md5, &["data", "cifar10", "--offline"]);
    for out in [flag, env, data] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        for want in ["offline", "--data DIR", "FMP_DATA=DIR", "--archive"] {
            assert!(err.contains(want), "missing '{want}' in:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "an offline run connected to the download address"
    );
    assert!(
        !cache.exists() || std::fs::read_dir(&cache).unwrap().count() == 0,
        "offline runs left files in the cache"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
