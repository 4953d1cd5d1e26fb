//! `fmp-engine bench kernels|scan`: front-ends to `fmp_engine::bench`.
use std::path::PathBuf;
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::select::DeviceSpec;
use fmp_engine::backend::Backend;
use fmp_engine::bench::kernels::{run_and_report, write_json, SuiteConfig};
use fmp_engine::bench::scan::{conv_line, run_scan_bench, summary, ScanBenchConfig};
use fmp_engine::bench::timing::BenchDevice;
use fmp_engine::{Error, Result};

use super::check::{int_in, seed, MAX_BATCH, MAX_CHANNELS, MAX_REPEATS, MAX_SAMPLES, MAX_WIDTH};
use super::common::DeviceArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Every backend op at the PreActResNet18 shapes: checked, then timed; GFLOP/s, GB/s, roofline.
    Kernels(KernelArgs),
    /// Time the batched FRG scan conv by conv; channel-samples/s, counted GFLOP/s, projected full scan.
    Scan(ScanArgs),
}

#[derive(clap::Args, Debug)]
struct ScanArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Model stem width.
    #[arg(long, default_value_t = 64, value_parser = int_in::<usize>(1, MAX_WIDTH))]
    width: usize,
    /// Images scored per channel (B).
    #[arg(long, default_value_t = 32, value_parser = int_in::<usize>(1, MAX_SAMPLES))]
    samples: usize,
    /// Only the first N convs (default all 20).
    #[arg(long, value_parser = int_in::<usize>(1, 20))]
    layers: Option<usize>,
    /// Channels timed per conv (default: one chunk); the rest is projected.
    #[arg(long, value_parser = int_in::<usize>(1, MAX_CHANNELS))]
    channels: Option<usize>,
    /// Channels per chunk (default: from the backend's memory budget).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_CHANNELS))]
    chunk: Option<usize>,
    /// Seed of the random model and images.
    #[arg(long, default_value_t = 0, value_parser = seed)]
    seed: u64,
    /// Weights to load (safetensors) instead of a random model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Save the model's weights (for benches/peers/frg_reference.py --weights).
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct KernelArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// CI mode: batch 2, 1 warm-up, 3 repeats.
    #[arg(long)]
    quick: bool,
    /// Activation batch (default 32, quick 2).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_BATCH))]
    batch: Option<usize>,
    /// Timed repeats per case (the median is reported).
    #[arg(long, value_parser = int_in::<usize>(1, MAX_REPEATS))]
    repeats: Option<usize>,
    /// Model stem width.
    #[arg(long, default_value_t = 64, value_parser = int_in::<usize>(1, MAX_WIDTH))]
    width: usize,
    /// Only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Kernels(a) => kernels(a),
        What::Scan(a) => scan(a),
    }
}

fn scan(a: ScanArgs) -> Result<()> {
    for (p, flag) in [(&a.json, "--json"), (&a.save_weights, "--save-weights")] {
        if let Some(p) = p {
            super::check::output_path(p, flag)?;
        }
    }
    if let Some(w) = &a.weights {
        super::check::input_file(w, "--weights")?;
    }
    let cfg = ScanBenchConfig {
        width: a.width.max(1),
        samples: a.samples.max(1),
        layers: a.layers,
        channels: a.channels,
        chunk: a.chunk,
        seed: a.seed,
        weights: a.weights,
        save_weights: a.save_weights,
        ..ScanBenchConfig::default()
    };
    let dev = BenchDevice::open(a.device.device.parse::<DeviceSpec>()?)?;
    println!(
        "# FRG scan on {} (B = {}, width {})",
        dev.backend.name(),
        cfg.samples,
        cfg.width
    );
    let rep = run_scan_bench(&dev, &cfg, |r| println!("{}", conv_line(r)))?;
    println!("{}", summary(&rep));
    if let Some(p) = &a.json {
        write_json(p, &rep)?;
        println!("# wrote {}", p.display());
    }
    Ok(())
}

fn kernels(a: KernelArgs) -> Result<()> {
    if let Some(p) = &a.json {
        super::check::output_path(p, "--json")?;
    }
    let mut cfg = if a.quick {
        SuiteConfig::quick()
    } else {
        SuiteConfig::full()
    };
    if let Some(b) = a.batch {
        cfg.batch = b.max(1);
    }
    if let Some(r) = a.repeats {
        cfg.repeats.repeats = r.max(1);
    }
    cfg.width = a.width.max(1);
    cfg.filter = a.filter;
    let dev = BenchDevice::open(a.device.device.parse::<DeviceSpec>()?)?;
    let cpu: Option<Arc<dyn Backend>> = dev
        .backend
        .is_gpu()
        .then(|| Arc::new(CpuBackend::new()) as Arc<dyn Backend>);
    let report = run_and_report(&dev, cpu.as_deref(), &cfg, a.json.as_deref())?;
    let failed = report.failures().len();
    if failed > 0 {
        return Err(Error::Msg(format!(
            "{failed} benchmark case(s) failed (see ERROR lines above)"
        )));
    }
    Ok(())
}
