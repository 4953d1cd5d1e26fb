//! `fmp-engine prune`.
use fmp_engine::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    Err(Error::Msg("`prune` is not implemented yet".into()))
}
