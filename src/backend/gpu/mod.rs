//! GPU-style backend generic over a kernel runner (CUDA driver or CPU emulator) (issues 3, 4).
pub mod runner;
