//! `fmp-engine info`: version, backends and threads.
use fmp_engine::backend::select::{select, DeviceSpec};
use fmp_engine::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip probing CUDA (which compiles or loads every kernel).
    #[arg(long)]
    pub no_cuda: bool,
}

pub fn run(args: Args) -> Result<()> {
    println!("fmp-engine {}", env!("CARGO_PKG_VERSION"));
    println!(
        "threads: {} (rayon; set RAYON_NUM_THREADS to change)",
        rayon::current_num_threads()
    );
    let cpu = select(DeviceSpec::Cpu)?;
    println!("backend cpu: available: {}", cpu.name());
    if args.no_cuda {
        println!("backend cuda: not probed (--no-cuda)");
    } else {
        match select(DeviceSpec::Cuda(0)) {
            Ok(b) => println!("backend cuda: available: {}", b.name()),
            Err(e) => println!("backend cuda: unavailable: {e}"),
        }
    }
    Ok(())
}
