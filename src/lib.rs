//! fmp-engine: Adversarial Feature Map Pruning (FMP, ICLR 2024) for backdoored PreActResNet18
//! classifiers, on hand-written CUDA kernels with a CPU reference backend.
//!
//! Layout: `backend` (one trait; CPU reference, GPU kernels via CUDA or the emulator), `model`
//! (PreActResNet18 on any backend), `weights` (safetensors), `data` (CIFAR/GTSRB readers),
//! `fmp` (FRG scan, pruning, fine-tuning, attacks, metrics), `bench` (counted FLOPs/bytes, timing).
pub mod alloc;
pub mod backend;
pub mod bench;
pub mod data;
pub mod error;
pub mod fmp;
pub mod model;
pub mod report;
pub mod rng;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
pub use tensor::{Indices, Tensor};
