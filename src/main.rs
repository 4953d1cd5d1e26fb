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

/// The subcommands, one line each: the variant, its doc line (the help text) and the `cli` module that
/// holds its `Args` and `run`. Gives the `Command` enum and `run`, which dispatches to the module.
macro_rules! subcommands {
    ($($(#[$doc:meta])* $variant:ident => $module:ident,)*) => {
        #[derive(Subcommand)]
        enum Command {
            $($(#[$doc])* $variant(cli::$module::Args),)*
        }

        fn run(command: Command) -> fmp_engine::Result<()> {
            match command {
                $(Command::$variant(a) => cli::$module::run(a),)*
            }
        }
    };
}

subcommands! {
    /// Version, available backends and threads.
    Info => info,
    /// Clean accuracy (and ASR/RA under an attack) of a model on a test set.
    Eval => eval,
    /// FRG scan: rank every conv feature map by how badly a perturbation aimed at it breaks the model.
    Scan => scan,
    /// Combine the partial reports of `scan --shard I/N` into one scan report.
    Merge => merge,
    /// Zero the feature maps selected by a scan report.
    Prune => prune,
    /// Fine-tune a (pruned) model on a clean class-balanced subset.
    Finetune => finetune,
    /// Scan, prune and fine-tune in one run.
    Defend => defend,
    /// Train a (backdoored) PreActResNet18 the way BackdoorBench does.
    Train => train,
    /// Train a small backdoored model, defend it, print Acc/ASR/RA before and after.
    Demo => demo,
    /// Train backdoored models and compare every defense over scan seeds; writes a Markdown table and JSON.
    Study => study,
    /// Download datasets into the engine's cache.
    Data => data,
    /// Compile every CUDA kernel with NVRTC and print its resource usage.
    Kernels => kernels,
    /// Benchmarks: kernels and the FRG scan.
    Bench => bench,
}

fn main() {
    let cli = Cli::parse();
    fmp_engine::fmp::download::set_offline(cli.offline);
    let result = run(cli.command);
    if let Err(e) = result {
        eprintln!("fmp-engine: error: {e}");
        if cli::interrupt::requested() {
            std::process::exit(cli::interrupt::EXIT_INTERRUPTED);
        }
        std::process::exit(1);
    }
}

/// Tensors start on cache lines (see `fmp_engine::alloc`).
#[global_allocator]
static ALLOC: fmp_engine::alloc::LineAligned = fmp_engine::alloc::LineAligned;
