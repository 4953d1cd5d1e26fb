//! `fmp-engine demo`: the README's main job. Finds CIFAR-10 (`--data`, `$FMP_DATA`, `../shared/data`, the
//! cache), trains a backdoored PreActResNet18 (small on a CPU, full size on a GPU), defends it with FMP and
//! prints Acc / ASR / RA before and after.
use std::path::PathBuf;
use std::time::Instant;

use fmp_engine::data::{DatasetKind, Split};
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::metrics::evaluate;
use fmp_engine::fmp::pipeline::{eval_batch, load_split};
use fmp_engine::fmp::train::{train_backdoored, BackdoorOptions};
use fmp_engine::model::{ModelConfig, PreActResNet18};
use fmp_engine::{Error, Result};

use super::check::{int_in, real_in, MAX_BATCH, MAX_EPOCHS, MAX_IMAGES, MAX_WIDTH};
use super::common::{cifar10_train, DeviceArgs, JsonOut};
use super::defend::{defend, print_metrics_table};
use super::finetune::FinetuneArgs;
use super::scan::{Recipe, ScanArgs, DEFEND_RECIPE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// CIFAR-10 folder [default: $FMP_DATA, ../shared/data, the engine's cache].
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "badnets")]
    pub attack: AttackKind,
    /// Base width [default: 8 on a CPU, 64 on a GPU].
    #[arg(long, value_parser = int_in::<usize>(1, MAX_WIDTH))]
    pub width: Option<usize>,
    /// Training images [default: 4000 on a CPU, all on a GPU].
    #[arg(long, value_parser = int_in::<usize>(2, MAX_IMAGES))]
    pub train_images: Option<usize>,
    /// Test images for Acc/ASR/RA [default: 2000 on a CPU, all on a GPU].
    #[arg(long, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub test_images: Option<usize>,
    /// Training epochs [default: 4 on a CPU, 100 on a GPU].
    #[arg(long, value_parser = int_in::<usize>(1, MAX_EPOCHS))]
    pub epochs: Option<usize>,
    /// Fine-tuning epochs after pruning.
    #[arg(long, default_value_t = 10, value_parser = int_in::<usize>(1, MAX_EPOCHS))]
    pub ft_epochs: usize,
    /// Training learning rate [default: 0.02 on a CPU, 0.01 on a GPU (the spec's)].
    #[arg(long, value_parser = real_in(0.0, true, 10.0, false))]
    pub lr: Option<f32>,
    /// Training batch size [default: 32 on a CPU (more steps in few epochs), 128 on a GPU (the spec's)].
    #[arg(long, value_parser = int_in::<usize>(2, MAX_BATCH))]
    pub batch: Option<usize>,
    /// Training augmentation (RandomCrop + flip) [default: off on a CPU, where few epochs must learn the
    /// trigger, on on a GPU as the spec says]. Fine-tuning always augments CIFAR-10.
    #[arg(long)]
    pub augment: Option<bool>,
    /// Scan recipe of the FMP defense (see `scan --help`): paper or margin4 [default: the study's
    /// best (docs/STUDY.md), as `defend`].
    #[arg(long, value_enum)]
    pub recipe: Option<Recipe>,
    /// Where the trained and defended weights go.
    #[arg(long, default_value = "fmp-demo")]
    pub workdir: PathBuf,
    /// Print one JSON object on stdout (progress text goes to stderr); fields in docs/report.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    if a.workdir.exists() && !a.workdir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--workdir {}: exists and is not a folder",
            a.workdir.display()
        )));
    }
    let json = JsonOut::begin(a.json)?;
    let backend = a.device.backend()?;
    let gpu = backend.is_gpu();
    // finds the data or, with none anywhere, downloads CIFAR-10 into the cache (unless --offline)
    let (dir, train) = cifar10_train(a.data.as_deref(), "demo")?;
    let kind = DatasetKind::Cifar10;
    let (test, _) = load_split(&dir, Split::Test)?;
    let width = a.width.unwrap_or(if gpu { 64 } else { 8 });
    // The attacker trains on the first `train_images`; the defender's clean pool is the whole training
    // split, of which fine-tuning takes the spec's 10% (class-balanced) and the scan its 32 images.
    let defender_pool = train;
    let train = defender_pool
        .clone()
        .truncate(
            a.train_images
                .unwrap_or(if gpu { usize::MAX } else { 4000 }),
        );
    let test = test.truncate(a.test_images.unwrap_or(if gpu { usize::MAX } else { 2000 }));
    let epochs = a.epochs.unwrap_or(if gpu { 100 } else { 4 });
    std::fs::create_dir_all(&a.workdir).map_err(|e| Error::io(&a.workdir, e))?;
    let t_all = Instant::now();
    println!(
        "demo: {} backdoor (target 0, poison rate 0.1), PreActResNet18 width {width}, {} training / {} test images from {}, on {}",
        a.attack,
        train.len(),
        test.len(),
        dir.display(),
        backend.name()
    );

    let mut model = PreActResNet18::new_random(backend.clone(), ModelConfig::cifar10(width), 0)?;
    // On a GPU the spec's recipe; on a CPU the recipe of the end-to-end test (tests/fmp_e2e.rs), which
    // learns the trigger in 4 epochs on 4,000 images: smaller batches, a higher rate, no augmentation.
    let mut opts = BackdoorOptions::backdoorbench(Some(a.attack), epochs, a.augment.unwrap_or(gpu));
    opts.sgd.lr = a.lr.unwrap_or(if gpu { 0.01 } else { 0.02 });
    opts.sgd.batch = a.batch.unwrap_or(if gpu { 128 } else { 32 });
    println!(
        "1/2 training the backdoored model ({epochs} epochs, lr {})",
        opts.sgd.lr
    );
    let print = &mut |s: &_| super::interrupt::print_epoch(s, false);
    train_backdoored(&mut model, &train, &opts, print, None)?;
    let trained = a.workdir.join(format!("{}-w{width}.safetensors", a.attack));
    model.save(&trained)?;
    let attack = Attack::new(a.attack, 0);
    let before = evaluate(&model, &test, Some(&attack), eval_batch(backend.as_ref()))?;
    print_metrics_table(&[("backdoored", before)]);

    println!(
        "2/2 FMP defense: scan (p = {}: as many channels per conv as the paper prunes), prune, fine-tune",
        width.min(64)
    );
    let scan = ScanArgs {
        recipe: Some(a.recipe.unwrap_or(DEFEND_RECIPE)),
        ..ScanArgs::paper(0, Some(width.min(64)))
    };
    let ft = FinetuneArgs {
        epochs: a.ft_epochs,
        ratio: 0.1,
        lr: 0.01,
        batch: 256,
        momentum: 0.9,
        weight_decay: 0.0,
        eta_min: 1e-4,
        ft_seed: 0,
    };
    let defended = a
        .workdir
        .join(format!("{}-w{width}-fmp.safetensors", a.attack));
    let mut report = defended.as_os_str().to_owned();
    report.push(".scan.json");
    let report_path = PathBuf::from(report);
    defend(
        &mut model,
        &defender_pool,
        kind,
        &dir,
        &trained,
        &scan,
        &ft,
        false,
        &report_path,
        &backend,
        &mut |_| Ok(()),
    )?;
    model.save(&defended)?;
    let after = evaluate(&model, &test, Some(&attack), eval_batch(backend.as_ref()))?;
    println!(
        "\nresult ({} test images, {:.0} s in all):",
        test.len(),
        t_all.elapsed().as_secs_f64()
    );
    print_metrics_table(&[("backdoored", before), ("after FMP", after)]);
    println!("weights: {} -> {}", trained.display(), defended.display());
    json.emit(&serde_json::json!({
        "attack": a.attack.name(),
        "target": 0,
        "width": width,
        "train_images": train.len(),
        "test_images": test.len(),
        "data": dir.display().to_string(),
        "device": backend.name(),
        "trained": trained.display().to_string(),
        "defended": defended.display().to_string(),
        "scan_report": report_path.display().to_string(),
        "before": before,
        "after": after,
        "seconds": t_all.elapsed().as_secs_f64(),
    }))
}
