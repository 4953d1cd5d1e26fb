//! Checks of the kernel emulator itself (`--features emu`): tests/emu_harness/driver.cpp is
//! compiled with the host C++ compiler against kernels/emu.h + kernels/emu_runtime.cpp, once
//! plainly and once with AddressSanitizer, and each mode runs in its own process:
//! real kernels vs naive loops, barrier deadlock detection, shuffle/vote semantics, a seeded
//! thread order exposing a planted race, ASan catching planted out-of-bounds reads/writes, and
//! CUDA features the emulator lacks failing to compile with a message naming them.
#![cfg(feature = "emu")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fmp-emu-harness-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compile the driver; None (with a printed reason) when the compiler or ASan runtime is missing.
fn build_driver(asan: bool) -> Option<PathBuf> {
    let out = scratch(if asan { "asan" } else { "plain" }).join("driver");
    let k = root().join("kernels");
    let mut cmd = Command::new(cxx());
    cmd.args([
        "-std=c++17",
        "-x",
        "c++",
        "-DFMP_EMU=1",
        "-O1",
        "-g",
        "-Wno-unknown-pragmas",
    ])
    .arg(format!("-I{}", k.display()))
    .arg(root().join("tests/emu_harness/driver.cpp"))
    .arg(k.join("emu_runtime.cpp"))
    .arg("-o")
    .arg(&out);
    if asan {
        cmd.args(["-fsanitize=address", "-fno-omit-frame-pointer"]);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if asan && (err.contains("cannot find -lasan") || err.contains("libasan")) {
                eprintln!("skipping the ASan checks: the compiler has no AddressSanitizer runtime:\n{err}");
                return None;
            }
            panic!("compiling the emulator driver failed:\n{err}");
        }
        Err(e) => {
            eprintln!("skipping: cannot run the C++ compiler {}: {e}", cxx());
            None
        }
    }
}

fn run(driver: &Path, mode: &str) -> (bool, String) {
    let o = Command::new(driver)
        .arg(mode)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn emu_harness_scheduler_semantics() {
    let Some(d) = build_driver(false) else { return };
    for mode in ["real", "deadlock", "shuffles", "order"] {
        let (ok, out) = run(&d, mode);
        assert!(ok, "driver mode {mode} failed:\n{out}");
    }
    let (_, out) = run(&d, "deadlock");
    assert!(out.contains("deadlock in block 0,0,0"), "{out}");
}

#[test]
fn emu_harness_asan_catches_out_of_bounds() {
    let Some(d) = build_driver(true) else { return };
    let (ok, out) = run(&d, "real");
    assert!(
        ok && !out.contains("ERROR: AddressSanitizer"),
        "real kernels under ASan:\n{out}"
    );
    for (mode, kernel) in [("oob", "oob_read"), ("dynoob", "dyn_oob")] {
        let (ok, out) = run(&d, mode);
        assert!(
            !ok,
            "ASan did not stop the planted overrun of {mode}:\n{out}"
        );
        assert!(
            out.contains("heap-buffer-overflow") && out.contains(kernel),
            "ASan report of {mode} should name a heap-buffer-overflow in {kernel}:\n{out}"
        );
    }
}

#[test]
fn emu_harness_missing_feature_fails_to_build() {
    let dir = scratch("lacks");
    for (snippet, needle) in [
        (
            "extern \"C\" __global__ void k(const UnaryArgs a) { a.y[0] = (float)__activemask(); }",
            "emu.h lacks __activemask",
        ),
        (
            "extern \"C\" __global__ void k(const UnaryArgs a) { __half h; (void)h; }",
            "emu.h lacks the type __half",
        ),
        (
            "extern \"C\" __global__ void k(const UnaryArgs a) { a.y[0] = (float)clock64(); }",
            "emu.h lacks clock64",
        ),
    ] {
        let f = dir.join("k.cu");
        std::fs::write(&f, format!("#include \"params.cuh\"\n{snippet}\n")).unwrap();
        let o = match Command::new(cxx())
            .args(["-std=c++17", "-x", "c++", "-DFMP_EMU=1", "-fsyntax-only"])
            .arg(format!("-I{}", root().join("kernels").display()))
            .arg(&f)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping: cannot run the C++ compiler: {e}");
                return;
            }
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "expected a build failure mentioning `{needle}`:\n{err}"
        );
    }
}
