//! The FMP defense: FRG scan, selection, pruning, fine-tuning, attacks and metrics (issue 6).
