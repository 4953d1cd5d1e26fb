#!/usr/bin/env bash
# Measure the CPU section of benches/RESULTS.md: the engine's kernel suite and FRG scan, and the
# PyTorch peers on the same shapes and weights, then the ratio tables (Markdown) in $OUTD/compare.md.
#
#   benches/run_cpu_results.sh            # OUTD=target/bench/cpu-<UTC time>, SCAN_CHANNELS=2
#
# Environment: PYTHON (default /work/venv/bin/python, else python3), OUTD, SCAN_CHANNELS (channels
# timed per conv, also the chunk), THREADS (PyTorch threads, default 2), FMP_BENCH_CPU_GBPS /
# FMP_BENCH_CPU_PEAK_GFLOPS (fixed ceilings).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-/work/venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUTD="${OUTD:-target/bench/cpu-$(date -u +%Y%m%dT%H%M)}"
CH="${SCAN_CHANNELS:-2}"
TH="${THREADS:-2}"
mkdir -p "$OUTD"
cargo build --release --bin fmp-engine
E=target/release/fmp-engine
{
  echo "date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cpus; load: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUTD/env.txt"
step() { echo "== $1 ($(date -u +%T))" >&2; }
step "engine kernels"
"$E" bench kernels --device cpu --json "$OUTD/kernels-cpu.json" >"$OUTD/kernels-cpu.txt"
step "PyTorch convs"
"$PY" benches/peers/conv_peer.py --device cpu --threads "$TH" --json "$OUTD/conv-peer-cpu.json" >/dev/null 2>"$OUTD/conv-peer-cpu.txt"
step "engine scan"
"$E" bench scan --device cpu --samples 32 --channels "$CH" --chunk "$CH" \
  --save-weights "$OUTD/weights.safetensors" --json "$OUTD/scan-cpu.json" >"$OUTD/scan-cpu.txt"
step "PyTorch reference FRG loop"
"$PY" benches/peers/frg_reference.py --device cpu --threads "$TH" --samples 32 --channels "$CH" \
  --weights "$OUTD/weights.safetensors" --json "$OUTD/frg-peer-cpu.json" >/dev/null 2>"$OUTD/frg-peer-cpu.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUTD/env.txt"
{
  cat "$OUTD/env.txt"; echo
  "$PY" benches/peers/compare.py kernels "$OUTD/kernels-cpu.json" "$OUTD/conv-peer-cpu.json"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan-cpu.json" "$OUTD/frg-peer-cpu.json"; echo
  grep '^#' "$OUTD/kernels-cpu.txt" "$OUTD/scan-cpu.txt" | sed 's/^[^:]*:/    /'
} >"$OUTD/compare.md"
echo "wrote $OUTD/compare.md" >&2
