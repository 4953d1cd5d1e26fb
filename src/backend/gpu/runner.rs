//! What a GPU-style backend needs from whatever runs its kernels: the CUDA driver (NVRTC-compiled
//! PTX) or the CPU grid emulator (the same `.cu` sources compiled as host C++, `--features emu`).
//!
//! Every kernel takes exactly one argument: a `#[repr(C)]` args struct passed by value, holding a
//! params struct and raw device pointers (`u64`). The struct is mirrored in the `.cu` file, so a
//! launch is (kernel id, launch configuration, bytes of the args struct) on both runners.
use crate::error::Result;
use crate::tensor::{Indices, Tensor};

/// A kernel: the `.cu` file (without extension) that defines it and its `extern "C"` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId {
    pub file: &'static str,
    pub name: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

pub trait Runner: Send + Sync + 'static {
    fn name(&self) -> String;
    fn is_gpu(&self) -> bool;
    fn synchronize(&self) -> Result<()>;
    fn memory_budget(&self) -> usize;
    /// Zero-initialised tensor.
    fn zeros(&self, shape: &[usize]) -> Result<Tensor>;
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor>;
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>>;
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices>;
    /// Raw address of the tensor's first element, to put into an args struct.
    fn ptr(&self, t: &Tensor) -> Result<u64>;
    fn indices_ptr(&self, t: &Indices) -> Result<u64>;
    /// Launch `kernel` with its args struct (as bytes). Errors name the kernel; in debug mode
    /// (`FMP_SYNC_LAUNCH=1`) the runner synchronises after each launch.
    fn launch(&self, kernel: KernelId, cfg: Launch, args: &[u8]) -> Result<()>;
}
