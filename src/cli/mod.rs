//! One module per subcommand: its clap `Args` and `run`.
pub mod bench;
pub mod check;
pub mod common;
pub mod data;
pub mod defend;
pub mod demo;
pub mod eval;
pub mod finetune;
pub mod info;
pub mod interrupt;
pub mod kernels;
pub mod merge;
pub mod prune;
pub mod scan;
pub mod train;
