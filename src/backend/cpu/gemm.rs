//! Packed SGEMM for the convolutions (placeholder until the blocked kernel lands).
pub fn kernel_name() -> &'static str {
    "direct loops"
}
