//! Benchmarks: counted FLOPs and bytes per kernel and per scan, timing, roofline (issue 5).
