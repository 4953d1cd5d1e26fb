//! `cargo bench --bench kernels`: the kernel suite at PreActResNet18 shapes on the CPU backend and,
//! when one works, on the CUDA backend (checked against the CPU backend there).
//!
//! Environment: FMP_BENCH_QUICK=1 (CI mode: batch 2, 3 repeats), FMP_BENCH_DEVICE=cpu|cuda|all
//! (default all: CPU, plus CUDA when available), FMP_BENCH_FILTER=substring, FMP_BENCH_BATCH,
//! FMP_BENCH_REPEATS, FMP_BENCH_WIDTH, FMP_BENCH_JSON_DIR (default target/bench). Reports are written
//! as kernels-cpu.json / kernels-cuda.json. Exits non-zero when any case fails its check.
use std::path::PathBuf;

use fmp_engine::backend::select::DeviceSpec;
use fmp_engine::bench::kernels::{run_and_report, SuiteConfig};
use fmp_engine::bench::timing::BenchDevice;

/// Tensors on cache lines, as in the `fmp-engine` binary.
#[global_allocator]
static ALLOC: fmp_engine::alloc::LineAligned = fmp_engine::alloc::LineAligned;

fn main() {
    if let Err(e) = run() {
        eprintln!("kernels bench: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> fmp_engine::Result<()> {
    let cfg = SuiteConfig::from_env()?;
    let which = std::env::var("FMP_BENCH_DEVICE").unwrap_or_else(|_| "all".into());
    let dir = std::env::var("FMP_BENCH_JSON_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("bench")
        });
    let cpu = BenchDevice::cpu();
    let mut failed = 0;
    if which == "cpu" || which == "all" {
        let rep = run_and_report(&cpu, None, &cfg, Some(&dir.join("kernels-cpu.json")))?;
        failed += rep.failures().len();
    }
    if which == "cuda" || which == "all" {
        match BenchDevice::open(DeviceSpec::Cuda(0)) {
            Ok(gpu) => {
                let rep = run_and_report(
                    &gpu,
                    Some(cpu.backend.as_ref()),
                    &cfg,
                    Some(&dir.join("kernels-cuda.json")),
                )?;
                failed += rep.failures().len();
            }
            Err(e) if which == "cuda" => return Err(e),
            Err(e) => println!("# CUDA skipped: {e}"),
        }
    }
    if failed > 0 {
        return Err(fmp_engine::Error::Msg(format!(
            "{failed} benchmark case(s) failed (see ERROR lines above)"
        )));
    }
    Ok(())
}
