//! `fmp-engine defend`.
use fmp_engine::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    Err(Error::Msg("`defend` is not implemented yet".into()))
}
