//! `fmp-engine scan`.
use fmp_engine::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    Err(Error::Msg("`scan` is not implemented yet".into()))
}
