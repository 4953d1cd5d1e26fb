#!/usr/bin/env bash
# Measure the CPU section of benches/RESULTS.md, engine and PyTorch peer side by side in one run:
#   1. the FRG scan at width 16, every one of the 1,200 feature maps, B = 32 (engine batched scan vs
#      the reference per-channel loop, same weights); again with both held to AVX2, and with the
#      engine's opt-in Winograd convolutions (FMP_CPU_CONV=winograd; also at width 64 and for the
#      fine-tuning steps);
#   2. the FRG scan at width 64, SCAN_CHANNELS per conv, projected conv by conv to 4,800 maps;
#   3. the fine-tuning SGD step (batch 256) at widths 16 and 64, and at width 16 again as PAIRS
#      alternating engine/PyTorch pairs (their median ratio);
#   4. `bench scan --profile` at widths 8, 16 and 64 (the chunk step by op);
#   5. optionally (KERNELS=1) the per-op kernel suite and its conv peer.
# Tables go to $OUTD/compare.md, each with the `uptime` load before and after it. The script refuses
# to measure when the 1-minute load is above MAX_LOAD (1.5): such numbers are not evidence.
#
#   benches/run_cpu_results.sh            # OUTD=target/bench/cpu-<UTC time>
#
# Environment: PYTHON (default /work/venv/bin/python, else python3), OUTD, PAIRS (default 5; 0: none), SCAN_CHANNELS (width-64
# channels timed per conv, default 2), THREADS (PyTorch threads, default 2), MAX_LOAD, KERNELS=1,
# FMP_BENCH_CPU_GBPS / FMP_BENCH_CPU_PEAK_GFLOPS (fixed ceilings).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-/work/venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUTD="${OUTD:-target/bench/cpu-$(date -u +%Y%m%dT%H%M)}"
CH="${SCAN_CHANNELS:-2}"
TH="${THREADS:-2}"
MAX_LOAD="${MAX_LOAD:-1.5}"
mkdir -p "$OUTD"
cargo build --release --bin fmp-engine
E=target/release/fmp-engine
load() { cut -d' ' -f1-3 /proc/loadavg; }
# Waits (up to QUIET_WAIT s, default 180) for the 1-minute load to fall to MAX_LOAD -- the previous
# step's own threads count in it for a while -- then refuses if it has not.
quiet() {
  local l waited=0
  while :; do
    l=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$l" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }' || return 0
    if [ "$waited" -ge "${QUIET_WAIT:-180}" ]; then
      echo "refusing to measure $1: load $l > $MAX_LOAD (wait for a quiet machine, or raise MAX_LOAD)" >&2
      exit 3
    fi
    sleep 5
    waited=$((waited + 5))
  done
}
step() { quiet "$1"; echo "== $1 ($(date -u +%T), load $(load))" >&2; echo "$1: load before $(load)" >>"$OUTD/loads.txt"; }
done_step() { echo "$1: load after $(load)" >>"$OUTD/loads.txt"; }
{
  echo "date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cpus"
  echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512vl|avx_vnni|amx_tile)$' | tr '\n' ' ')"
  echo "engine: $("$E" info 2>/dev/null | grep -i -m1 cpu || true)"
  echo "torch: $("$PY" -c 'import torch; print(torch.__version__, torch.backends.mkldnn.is_available(), torch.backends.cpu.get_cpu_capability())' 2>/dev/null || echo none)"
  echo "torch, AVX2 forced: $(ATEN_CPU_CAPABILITY=avx2 "$PY" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())' 2>/dev/null || echo none)"
  echo "load at start: $(load)"
} | tee "$OUTD/env.txt"

step "scan width 16 (engine)"
"$E" bench scan --device cpu --width 16 --samples 32 --channels 100000 \
  --save-weights "$OUTD/w16.safetensors" --json "$OUTD/scan16-cpu.json" >"$OUTD/scan16-cpu.txt"
done_step "scan width 16 (engine)"
step "scan width 16 (PyTorch reference loop)"
"$PY" benches/peers/frg_reference.py --device cpu --threads "$TH" --samples 32 --width 16 --channels 0 \
  --weights "$OUTD/w16.safetensors" --json "$OUTD/frg16-peer-cpu.json" >/dev/null 2>"$OUTD/frg16-peer-cpu.txt"
done_step "scan width 16 (PyTorch reference loop)"

step "scan width 16 (engine, AVX2 kernels forced)"
FMP_CPU_KERNEL=avx2 "$E" bench scan --device cpu --width 16 --samples 32 --channels 100000 \
  --weights "$OUTD/w16.safetensors" --json "$OUTD/scan16-avx2-cpu.json" >"$OUTD/scan16-avx2-cpu.txt"
done_step "scan width 16 (engine, AVX2 kernels forced)"
# The fair AVX2 peer: PyTorch held to AVX2 too (ATen kernels and oneDNN convolutions), as it runs on
# an AVX2-only machine.
step "scan width 16 (PyTorch reference loop, AVX2 forced)"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "$PY" benches/peers/frg_reference.py --device cpu \
  --threads "$TH" --samples 32 --width 16 --channels 0 --weights "$OUTD/w16.safetensors" \
  --json "$OUTD/frg16-peer-avx2-cpu.json" >/dev/null 2>"$OUTD/frg16-peer-avx2-cpu.txt"
done_step "scan width 16 (PyTorch reference loop, AVX2 forced)"

step "scan width 16 (engine, Winograd convolutions: FMP_CPU_CONV=winograd)"
FMP_CPU_CONV=winograd "$E" bench scan --device cpu --width 16 --samples 32 --channels 100000 \
  --weights "$OUTD/w16.safetensors" --json "$OUTD/scan16-winograd-cpu.json" >"$OUTD/scan16-winograd-cpu.txt"
done_step "scan width 16 (engine, Winograd convolutions: FMP_CPU_CONV=winograd)"

step "scan width 64 (engine)"
"$E" bench scan --device cpu --width 64 --samples 32 --channels "$CH" \
  --save-weights "$OUTD/w64.safetensors" --json "$OUTD/scan64-cpu.json" >"$OUTD/scan64-cpu.txt"
done_step "scan width 64 (engine)"
step "scan width 64 (engine, Winograd)"
FMP_CPU_CONV=winograd "$E" bench scan --device cpu --width 64 --samples 32 --channels "$CH" \
  --weights "$OUTD/w64.safetensors" --json "$OUTD/scan64-winograd-cpu.json" >"$OUTD/scan64-winograd-cpu.txt"
done_step "scan width 64 (engine, Winograd)"
step "scan width 64 (PyTorch reference loop)"
"$PY" benches/peers/frg_reference.py --device cpu --threads "$TH" --samples 32 --width 64 --channels "$CH" \
  --weights "$OUTD/w64.safetensors" --json "$OUTD/frg64-peer-cpu.json" >/dev/null 2>"$OUTD/frg64-peer-cpu.txt"
done_step "scan width 64 (PyTorch reference loop)"

for W in 16 64; do
  S=5; [ "$W" = 64 ] && S=3
  step "fine-tuning step width $W (engine)"
  "$E" bench train --device cpu --width "$W" --batch 256 --steps "$S" --json "$OUTD/train$W-cpu.json" >"$OUTD/train$W-cpu.txt"
  done_step "fine-tuning step width $W (engine)"
  step "fine-tuning step width $W (engine, Winograd)"
  FMP_CPU_CONV=winograd "$E" bench train --device cpu --width "$W" --batch 256 --steps "$S" \
    --json "$OUTD/train$W-winograd-cpu.json" >"$OUTD/train$W-winograd-cpu.txt"
  done_step "fine-tuning step width $W (engine, Winograd)"
  step "fine-tuning step width $W (PyTorch)"
  "$PY" benches/peers/finetune_peer.py --threads "$TH" --width "$W" --batch 256 --steps "$S" \
    --json "$OUTD/finetune$W-peer-cpu.json" >/dev/null 2>"$OUTD/finetune$W-peer-cpu.txt"
  done_step "fine-tuning step width $W (PyTorch)"
done

# The width-16 fine-tuning step again as PAIRS (default 5) engine/PyTorch pairs taken back to back,
# alternating which side goes first: the ratio's median over pairs, since this kind of VM drifts by
# tens of percent within minutes (benches/RESULTS.md, eighth session).
PAIRS="${PAIRS:-5}"
EP=""; PP=""
pair_engine() { "$E" bench train --device cpu --width 16 --batch 256 --steps 5 --json "$OUTD/pair$1-train16-cpu.json" >/dev/null; }
pair_peer() { "$PY" benches/peers/finetune_peer.py --threads "$TH" --width 16 --batch 256 --steps 5 \
  --json "$OUTD/pair$1-finetune16-peer-cpu.json" >/dev/null 2>&1; }
for i in $(seq "$PAIRS"); do
  step "fine-tuning pair $i, width 16"
  if [ $((i % 2)) = 1 ]; then pair_engine "$i"; pair_peer "$i"; else pair_peer "$i"; pair_engine "$i"; fi
  done_step "fine-tuning pair $i, width 16"
  EP="$EP${EP:+,}$OUTD/pair$i-train16-cpu.json"; PP="$PP${PP:+,}$OUTD/pair$i-finetune16-peer-cpu.json"
done

for W in 8 16 64; do
  step "profile width $W"
  "$E" bench scan --device cpu --width "$W" --samples 32 --channels 2 --profile >"$OUTD/profile$W.txt"
  done_step "profile width $W"
done

if [ "${KERNELS:-0}" = 1 ]; then
  step "engine kernels"
  "$E" bench kernels --device cpu --json "$OUTD/kernels-cpu.json" >"$OUTD/kernels-cpu.txt"
  "$PY" benches/peers/conv_peer.py --device cpu --threads "$TH" --json "$OUTD/conv-peer-cpu.json" >/dev/null 2>"$OUTD/conv-peer-cpu.txt"
  done_step "engine kernels"
fi

{
  cat "$OUTD/env.txt"; echo
  echo "### FRG scan, width 16, all 1,200 maps"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan16-cpu.json" "$OUTD/frg16-peer-cpu.json"; echo
  echo "### FRG scan, width 16, engine with AVX2 kernels forced (FMP_CPU_KERNEL=avx2)"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan16-avx2-cpu.json" "$OUTD/frg16-peer-cpu.json"; echo
  echo "### FRG scan, width 16, both held to AVX2 (engine FMP_CPU_KERNEL=avx2; PyTorch ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan16-avx2-cpu.json" "$OUTD/frg16-peer-avx2-cpu.json"; echo
  echo "### FRG scan, width 16, engine with Winograd convolutions (FMP_CPU_CONV=winograd, opt-in)"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan16-winograd-cpu.json" "$OUTD/frg16-peer-cpu.json"; echo
  echo "### FRG scan, width 64, $CH maps per conv, projected to 4,800"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan64-cpu.json" "$OUTD/frg64-peer-cpu.json"; echo
  echo "### FRG scan, width 64, Winograd (opt-in), projected to 4,800"; echo
  "$PY" benches/peers/compare.py scan "$OUTD/scan64-winograd-cpu.json" "$OUTD/frg64-peer-cpu.json"; echo
  for W in 16 64; do
    echo "### Fine-tuning step, width $W"; echo
    "$PY" benches/peers/compare.py train "$OUTD/train$W-cpu.json" "$OUTD/finetune$W-peer-cpu.json"; echo
    echo "### Fine-tuning step, width $W, Winograd (opt-in)"; echo
    "$PY" benches/peers/compare.py train "$OUTD/train$W-winograd-cpu.json" "$OUTD/finetune$W-peer-cpu.json"; echo
  done
  if [ -n "$EP" ]; then
    echo "### Fine-tuning step, width 16, $PAIRS alternating engine/PyTorch pairs"; echo
    "$PY" benches/peers/compare.py train-pairs "$EP" "$PP"; echo
  fi
  if [ -f "$OUTD/kernels-cpu.json" ]; then
    "$PY" benches/peers/compare.py kernels "$OUTD/kernels-cpu.json" "$OUTD/conv-peer-cpu.json"; echo
  fi
  echo "### Loads"; echo; sed 's/^/    /' "$OUTD/loads.txt"; echo
  grep -h '^#' "$OUTD"/scan*-cpu.txt | sed 's/^/    /'
} >"$OUTD/compare.md"
echo "wrote $OUTD/compare.md" >&2
