//! Arguments shared by subcommands.
use std::sync::Arc;

use fmp_engine::backend::select::{select, DeviceSpec};
use fmp_engine::backend::Backend;
use fmp_engine::Result;

#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to compute: auto (GPU when one works, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = super::check::device)]
    pub device: String,
}

impl DeviceArgs {
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        select(self.device.parse::<DeviceSpec>()?)
    }
}
