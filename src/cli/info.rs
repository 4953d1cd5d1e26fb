//! `fmp-engine info`: version, backends and threads.
use fmp_engine::backend::select::{select, DeviceSpec};
use fmp_engine::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip probing CUDA (which compiles or loads every kernel).
    #[arg(long)]
    pub no_cuda: bool,
    /// Print one JSON object (version, threads, backends) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let threads = rayon::current_num_threads();
    let cpu = select(DeviceSpec::Cpu)?;
    let cuda = (!args.no_cuda).then(|| select(DeviceSpec::Cuda(0)));
    if args.json {
        let cuda = match &cuda {
            None => serde_json::json!({"available": false, "probed": false}),
            Some(Ok(b)) => serde_json::json!({"available": true, "probed": true, "name": b.name()}),
            Some(Err(e)) => {
                serde_json::json!({"available": false, "probed": true, "error": e.to_string()})
            }
        };
        println!(
            "{}",
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "threads": threads,
                "backends": {"cpu": {"available": true, "name": cpu.name()}, "cuda": cuda},
            })
        );
        return Ok(());
    }
    println!("fmp-engine {}", env!("CARGO_PKG_VERSION"));
    println!("threads: {threads} (rayon; set RAYON_NUM_THREADS to change)");
    println!("backend cpu: available: {}", cpu.name());
    match cuda {
        None => println!("backend cuda: not probed (--no-cuda)"),
        Some(Ok(b)) => println!("backend cuda: available: {}", b.name()),
        Some(Err(e)) => println!("backend cuda: unavailable: {e}"),
    }
    Ok(())
}
