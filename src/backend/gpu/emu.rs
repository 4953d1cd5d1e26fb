//! `EmuRunner` (`--features emu`, issue 4): runs the kernels of `kernels/*.cu`, compiled as host C++
//! by build.rs against `kernels/emu.h`, on host memory. Blocks run one after another; the threads of
//! a block are cooperative fibers, so barriers and warp shuffles behave as on a GPU. Launches go
//! through the generated C++ dispatch table (`fmp_emu_launch`), which checks the kernel name, the
//! args-struct size (against the C++ mirror), the launch limits, barrier deadlocks and warp misuse.
//! `EmuBackend` is the GPU backend (same launchers, grids and shared sizes) over this runner.
use std::ffi::{c_char, c_void, CString};

use super::runner::{KernelId, Launch, Runner};
use super::GpuBackend;
use crate::error::{Error, Result};
use crate::tensor::{Indices, Storage, Tensor};

pub type EmuBackend = GpuBackend<EmuRunner>;

extern "C" {
    fn fmp_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        args: *const c_void,
        args_size: u64,
        order_seed: u64,
        err: *mut c_char,
        err_len: u64,
    ) -> i32;
}

/// Host-memory runner over the emulated kernels.
#[derive(Clone, Debug, Default)]
pub struct EmuRunner {
    /// 0: threads of a block run in index order between barriers; otherwise a seeded shuffle of
    /// that order per scheduling round (catches code relying on an order the GPU does not promise).
    order_seed: u64,
}

impl EmuRunner {
    pub fn new() -> Self {
        EmuRunner { order_seed: 0 }
    }
    pub fn with_order_seed(seed: u64) -> Self {
        EmuRunner { order_seed: seed }
    }
}

impl EmuBackend {
    /// Emulated backend; `order_seed` as in `EmuRunner::with_order_seed` (0 = in order).
    pub fn emulated(order_seed: u64) -> Self {
        GpuBackend::new(EmuRunner::with_order_seed(order_seed))
    }
}

fn host_of(t: &Tensor) -> Result<&[f32]> {
    match &t.storage {
        Storage::Host(v) => Ok(v),
        s => Err(Error::WrongBackend {
            backend: "emu",
            found: s.location(),
        }),
    }
}

impl Runner for EmuRunner {
    fn name(&self) -> String {
        format!(
            "emu (kernels on the CPU grid emulator, order seed {})",
            self.order_seed
        )
    }
    fn is_gpu(&self) -> bool {
        false
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn memory_budget(&self) -> usize {
        1 << 30
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::on_host(vec![0.0; shape.iter().product()], shape))
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "from_host",
                format!("{} values for shape {shape:?}", data.len()),
            ));
        }
        Ok(Tensor::on_host(data.to_vec(), shape))
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(host_of(t)?.to_vec())
    }
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices> {
        Ok(Indices::on_host(data))
    }
    fn ptr(&self, t: &Tensor) -> Result<u64> {
        // The kernels write only through pointers of tensors the launcher holds `&mut` to (the
        // backend trait's outputs), so no shared borrow is written through.
        Ok(host_of(t)?.as_ptr() as u64)
    }
    fn indices_ptr(&self, t: &Indices) -> Result<u64> {
        match &t.storage {
            Storage::Host(v) => Ok(v.as_ptr() as u64),
            s => Err(Error::WrongBackend {
                backend: "emu",
                found: s.location(),
            }),
        }
    }
    fn launch(&self, kernel: KernelId, cfg: Launch, args: &[u8]) -> Result<()> {
        let name = CString::new(kernel.name)
            .map_err(|_| Error::InvalidArgument(format!("kernel name {:?}", kernel.name)))?;
        let mut err = vec![0u8; 1024];
        // SAFETY: `name` is NUL-terminated, grid/block point at 3 u32 each, `args` is the args
        // struct the kernel expects (its size is checked on the C++ side against the mirror), its
        // pointers address live host buffers owned by the caller's tensors for the whole call, and
        // `err` is a writable buffer of the given length.
        let rc = unsafe {
            fmp_emu_launch(
                name.as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.shared_bytes,
                args.as_ptr() as *const c_void,
                args.len() as u64,
                self.order_seed,
                err.as_mut_ptr() as *mut c_char,
                err.len() as u64,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        Err(Error::Cuda {
            context: format!(
                "emulated kernel {}/{} (grid {:?}, block {:?}, shared {})",
                kernel.file, kernel.name, cfg.grid, cfg.block, cfg.shared_bytes
            ),
            msg: String::from_utf8_lossy(&err[..end]).into_owned(),
        })
    }
}
