use clap::{Parser, Subcommand};

mod cli;

/// fmp-engine: find and remove backdoors in PreActResNet18 classifiers with Adversarial Feature Map Pruning.
#[derive(Parser)]
#[command(name = "fmp-engine", version, about)]
struct Cli {
    /// Never download (also FMP_OFFLINE=1): without a dataset, say how to point at a local copy.
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, available backends and threads.
    Info(cli::info::Args),
    /// Clean accuracy (and ASR/RA under an attack) of a model on a test set.
    Eval(cli::eval::Args),
    /// FRG scan: rank every conv feature map by how badly a perturbation aimed at it breaks the model.
    Scan(cli::scan::Args),
    /// Combine the partial reports of `scan --shard I/N` into one scan report.
    Merge(cli::merge::Args),
    /// Zero the feature maps selected by a scan report.
    Prune(cli::prune::Args),
    /// Fine-tune a (pruned) model on a clean class-balanced subset.
    Finetune(cli::finetune::Args),
    /// Scan, prune and fine-tune in one run.
    Defend(cli::defend::Args),
    /// Train a (backdoored) PreActResNet18 the way BackdoorBench does.
    Train(cli::train::Args),
    /// Train a small backdoored model, defend it, print Acc/ASR/RA before and after.
    Demo(cli::demo::Args),
    /// Train backdoored models and compare every defense over scan seeds; writes a Markdown table and JSON.
    Study(cli::study::Args),
    /// Download datasets into the engine's cache.
    Data(cli::data::Args),
    /// Compile every CUDA kernel with NVRTC and print its resource usage.
    Kernels(cli::kernels::Args),
    /// Benchmarks: kernels and the FRG scan.
    Bench(cli::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    fmp_engine::fmp::download::set_offline(cli.offline);
    let result = match cli.command {
        Command::Info(a) => cli::info::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Scan(a) => cli::scan::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::Prune(a) => cli::prune::run(a),
        Command::Finetune(a) => cli::finetune::run(a),
        Command::Defend(a) => cli::defend::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Demo(a) => cli::demo::run(a),
        Command::Study(a) => cli::study::run(a),
        Command::Data(a) => cli::data::run(a),
        Command::Kernels(a) => cli::kernels::run(a),
        Command::Bench(a) => cli::bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("fmp-engine: error: {e}");
        if cli::interrupt::requested() {
            std::process::exit(cli::interrupt::EXIT_INTERRUPTED);
        }
        std::process::exit(1);
    }
}
