//! Benchmarks (issue 5): counted FLOPs and compulsory bytes (`count`), timing (`timing`), device
//! ceilings for the roofline (`device`), the kernel suite at PreActResNet18 shapes with correctness
//! checks against naive references (`kernels`, `reference`) and the FRG scan benchmark (`scan`).
//! Front-ends: `cargo bench` (benches/kernels.rs) and `fmp-engine bench kernels|scan`.
pub mod count;
pub mod device;
pub mod kernels;
pub mod profile;
pub mod reference;
pub mod scan;
pub mod timing;
pub mod train;

pub use count::{Arch, OpCost};
pub use device::Ceilings;
pub use timing::{time_op, Repeats, Stats};
