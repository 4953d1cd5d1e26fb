//! `fmp-engine bench kernels|scan`: front-ends to `fmp_engine::bench`.
use std::path::PathBuf;
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::select::DeviceSpec;
use fmp_engine::backend::Backend;
use fmp_engine::bench::kernels::{run_and_report, write_json, SuiteConfig};
use fmp_engine::bench::profile::{profile_table, ProfileEntry};
use fmp_engine::bench::scan::{conv_line, run_scan_bench, summary, ScanBenchConfig};
use fmp_engine::bench::timing::BenchDevice;
use fmp_engine::bench::train::{run_train_bench, summary as train_summary, TrainBenchConfig};
use fmp_engine::{Error, Result};

use super::check::{int_in, seed, MAX_BATCH, MAX_CHANNELS, MAX_REPEATS, MAX_SAMPLES, MAX_WIDTH};
use super::common::{DeviceArgs, JsonOut};

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
    /// Time the fine-tuning step (train-mode forward, backward, SGD) at a batch; projects fine-tuning.
    Train(TrainArgs),
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Model stem width.
    #[arg(long, default_value_t = 16, value_parser = int_in::<usize>(1, MAX_WIDTH))]
    width: usize,
    /// Images per step (at least 2: batch statistics need two).
    #[arg(long, default_value_t = 256, value_parser = int_in::<usize>(2, MAX_BATCH))]
    batch: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = int_in::<usize>(1, MAX_REPEATS))]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1, value_parser = int_in::<usize>(0, MAX_REPEATS))]
    warmup: usize,
    /// Print the timed steps' time by op and shape.
    #[arg(long)]
    profile: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
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
    /// Write the JSON report here (`-`: print it on stdout, the text going to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the chunk step's time by op and shape (counted GFLOP/s and GB/s per op).
    #[arg(long)]
    profile: bool,
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
    /// Write the JSON report here (`-`: print it on stdout, the text going to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Kernels(a) => kernels(a),
        What::Scan(a) => scan(a),
        What::Train(a) => train(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let cfg = TrainBenchConfig {
        width: a.width,
        batch: a.batch,
        steps: a.steps,
        warmup: a.warmup,
        profile: a.profile,
        ..TrainBenchConfig::default()
    };
    let (json, json_file) = json_target(&a.json)?;
    if let Some(p) = json_file {
        super::check::output_path(p, "--json")?;
    }
    let dev = BenchDevice::open(a.device.device.parse::<DeviceSpec>()?)?;
    println!("# fine-tuning step on {}", dev.backend.name());
    let rep = run_train_bench(&dev, &cfg)?;
    if a.profile {
        println!(
            "# profiled: ops timed one at a time (the weight gradients the CPU runs alongside the \
             input-gradient chain run after it here), so the step is slower than without --profile"
        );
    }
    println!("{}", train_summary(&rep));
    let profile = rep.profile.as_deref();
    finish(&rep, profile, rep.ceilings.peak_flops, &json, json_file)
}

/// The end of `bench scan` and `bench train`: the profile table (with --profile), the JSON file
/// (--json FILE) and the JSON on stdout (--json -).
fn finish<T: serde::Serialize>(
    rep: &T,
    profile: Option<&[ProfileEntry]>,
    peak_flops: f64,
    json: &JsonOut,
    json_file: Option<&std::path::Path>,
) -> Result<()> {
    if let Some(p) = profile {
        print!("{}", profile_table(p, peak_flops));
    }
    if let Some(p) = json_file {
        write_json(p, rep)?;
        println!("# wrote {}", p.display());
    }
    json.emit(rep)
}

/// `--json -`: the report goes to stdout (returns the output and no path), else to the file.
fn json_target(p: &Option<PathBuf>) -> Result<(JsonOut, Option<&std::path::Path>)> {
    let stdout = p.as_deref() == Some(std::path::Path::new("-"));
    Ok((JsonOut::begin(stdout)?, p.as_deref().filter(|_| !stdout)))
}

fn scan(a: ScanArgs) -> Result<()> {
    let (json, json_file) = json_target(&a.json)?;
    for (p, flag) in [
        (&json_file, "--json"),
        (&a.save_weights.as_deref(), "--save-weights"),
    ] {
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
        profile: a.profile,
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
    let profile = rep.profile.as_deref();
    finish(&rep, profile, rep.ceilings.peak_flops, &json, json_file)
}

fn kernels(a: KernelArgs) -> Result<()> {
    let (json, json_file) = json_target(&a.json)?;
    if let Some(p) = json_file {
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
    let report = run_and_report(&dev, cpu.as_deref(), &cfg, json_file)?;
    json.emit(&report)?;
    let failed = report.failures().len();
    if failed > 0 {
        return Err(Error::Msg(format!(
            "{failed} benchmark case(s) failed (see ERROR lines above)"
        )));
    }
    Ok(())
}
