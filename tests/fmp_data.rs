//! `data cifar10` download path against a loopback HTTP server serving a small archive: success with the
//! right MD5 (the folder loads as CIFAR-10), a wrong MD5 or a 404 is a clear error and leaves nothing behind.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

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
