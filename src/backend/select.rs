//! Device selection: `--device auto|cpu|cuda|cuda:N`.
use std::sync::Arc;

use super::Backend;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown device '{s}': expected auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

/// Build the backend for `spec`. `Auto` uses the first CUDA device when one works and otherwise
/// prints one line saying it falls back to the CPU.
pub fn select(spec: DeviceSpec) -> Result<Arc<dyn Backend>> {
    match spec {
        DeviceSpec::Cpu => Ok(Arc::new(super::cpu::CpuBackend::new())),
        DeviceSpec::Cuda(i) => cuda(i),
        DeviceSpec::Auto => match cuda(0) {
            Ok(b) => Ok(b),
            Err(e) => {
                eprintln!("fmp-engine: no usable GPU ({e}); falling back to the CPU backend");
                Ok(Arc::new(super::cpu::CpuBackend::new()))
            }
        },
    }
}

/// The CUDA backend on device `ordinal`: checks the driver, the device and NVRTC, then compiles
/// (or loads from the kernel cache) every kernel. Every failure is an error, never a panic.
fn cuda(ordinal: usize) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(super::gpu::cuda::CudaBackend::cuda(ordinal)?))
}
