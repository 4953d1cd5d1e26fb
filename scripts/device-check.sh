#!/usr/bin/env bash
# GPU check of the CUDA backend in one short device call (issue 3).
#
#   scripts/device-check.sh prepare   (here, no GPU needed) builds the release binary and the GPU
#       test binaries, gathers them with a small data sample into ./device/ (git-ignored), and
#       prints the one device command to run.
#   scripts/device-check.sh run       (on the GPU machine: no Rust there; CUDA 13 toolkit and
#       PyTorch present) runs `fmp-engine kernels`, the GPU tests, the engine's model throughput,
#       the benchmark hook and the PyTorch peer, and writes everything plus summary.md under $OUT.
#       Stays inside one 10-minute call: every step has a timeout under a global deadline.
#
# Environment for `run`: OUT (required), FMP_DEVICE_DEADLINE_S (default 480), PYTHON (default python3).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEV="$ROOT/device"

die() { echo "device-check: $*" >&2; exit 1; }

prepare() {
  set -e
  command -v cargo >/dev/null || die "cargo not found (prepare runs on the build machine)"
  local data="${FMP_DATA:-}"
  if [ -z "$data" ] && [ -d "$ROOT/../shared/data" ]; then data="$(cd "$ROOT/../shared/data" && pwd)"; fi
  if [ -z "$data" ] && [ -d /work/shared/data ]; then data=/work/shared/data; fi
  echo "device-check: building the release binary and test binaries (this takes a while on 2 cores)" >&2
  cargo build --release --bin fmp-engine
  local json; json="$(mktemp)"
  cargo test --release --no-run --test 'gpu_*' --test 'nvrtc_*' --message-format=json >"$json"
  rm -rf "$DEV"
  mkdir -p "$DEV/bin" "$DEV/tests" "$DEV/data/cifar10" "$DEV/data/cifar10-lossless20"
  cp target/release/fmp-engine "$DEV/bin/"
  # Test executables of targets whose name contains gpu or nvrtc, from cargo's JSON messages.
  python3 - "$json" "$DEV/tests" <<'PY'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
n = 0
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if "test" in t["kind"] and ("gpu" in t["name"] or "nvrtc" in t["name"]):
        shutil.copy2(m["executable"], os.path.join(dst, t["name"]))
        n += 1
print(f"device-check: {n} test binaries", file=sys.stderr)
PY
  rm -f "$json"
  # Debug info is not needed on the device; keep the carry small (limit 64 MiB).
  for f in "$DEV"/bin/* "$DEV"/tests/*; do strip --strip-debug "$f" 2>/dev/null || true; done
  # Data sample: the first 2,000 CIFAR-10 test records and the lossless fixture.
  if [ -n "$data" ] && [ -f "$data/cifar10/test_batch.bin" ]; then
    head -c $((2000 * 3073)) "$data/cifar10/test_batch.bin" >"$DEV/data/cifar10/test_batch.bin"
    cp "$data/cifar10/batches.meta.txt" "$DEV/data/cifar10/" 2>/dev/null || true
    cp "$data/cifar10-lossless20/test_first20.bin" "$DEV/data/cifar10-lossless20/" 2>/dev/null || true
  else
    echo "device-check: no data folder found (FMP_DATA); tests needing data will skip" >&2
  fi
  if [ -d tests/fixtures ]; then cp -r tests/fixtures "$DEV/fixtures"; fi
  # Tests may locate files through the build machine's crate path: recorded so `run` can link it.
  echo "$ROOT" >"$DEV/manifest_dir"
  git rev-parse HEAD >"$DEV/commit" 2>/dev/null || true
  local size; size=$(du -sm "$DEV" | cut -f1)
  echo "device-check: prepared $DEV (${size} MiB; carry limit 64 MiB)" >&2
  [ "$size" -lt 64 ] || die "device/ is ${size} MiB, over the 64 MiB carry limit"
  cat <<EOF
Run on the GPU machine (one call, ~5 minutes):
  run(command="bash scripts/device-check.sh run", carry=["device"], timeout_s=600)
Results: summary.md, kernels.txt, test-*.txt, engine_throughput.txt, pytorch_throughput.{txt,json} under \$OUT.
EOF
}

# ---- run (GPU machine) ---------------------------------------------------------------------------
START=$(date +%s)
left() { echo $(( ${FMP_DEVICE_DEADLINE_S:-480} - ($(date +%s) - START) )); }
# step NAME TIMEOUT CMD...: run with min(TIMEOUT, time left), output to $OUT/NAME.txt, log status.
step() {
  local name="$1" t="$2"; shift 2
  local l; l=$(left)
  if [ "$l" -lt 15 ]; then echo "| $name | skipped (deadline) | |" >>"$OUT/steps.md"; return 99; fi
  [ "$t" -gt "$l" ] && t=$l
  local s; s=$(date +%s)
  timeout -k 5 "$t" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  local status=ok; [ $rc -ne 0 ] && status="FAILED (rc $rc)"; [ $rc -eq 124 ] && status="TIMEOUT (${t}s)"
  echo "| $name | $status | $(( $(date +%s) - s ))s |" >>"$OUT/steps.md"
  echo "device-check: $name: $status" >&2
  return $rc
}

# Sets NVRTC_WHERE and, when needed, LD_LIBRARY_PATH (no subshell, so the export sticks).
find_nvrtc() {
  NVRTC_WHERE="NOT FOUND"
  # Prefer what the loader finds; else the toolkit; else a pip wheel next to PyTorch.
  if ldconfig -p 2>/dev/null | grep -q 'libnvrtc.so.13'; then NVRTC_WHERE="loader path"; return; fi
  local d
  for d in "${CUDA_HOME:-}/lib64" /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib; do
    if [ -e "$d/libnvrtc.so.13" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; NVRTC_WHERE="$d"; return; fi
  done
  local sp
  sp=$("${PYTHON:-python3}" -c 'import site,sys; print("\n".join(site.getsitepackages()+[site.getusersitepackages()]))' 2>/dev/null)
  for d in $sp; do
    for l in "$d/nvidia/cu13/lib" "$d/nvidia/cuda_nvrtc/lib"; do
      if [ -e "$l/libnvrtc.so.13" ]; then export LD_LIBRARY_PATH="$l${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; NVRTC_WHERE="$l"; return; fi
    done
  done
  if [ -e "$DEV/nvrtc/libnvrtc.so.13" ]; then export LD_LIBRARY_PATH="$DEV/nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; NVRTC_WHERE="$DEV/nvrtc"; return; fi
}

run() {
  : "${OUT:?OUT must be set}"
  [ -x "$DEV/bin/fmp-engine" ] || die "device/bin/fmp-engine missing: run 'scripts/device-check.sh prepare' first and carry device/"
  mkdir -p "$OUT"
  echo "| step | status | time |" >"$OUT/steps.md"; echo "|---|---|---|" >>"$OUT/steps.md"
  local gpu cc arch nv
  gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  arch="sm_${cc:-90}"
  find_nvrtc; nv="$NVRTC_WHERE"
  export FMP_REQUIRE_GPU=1 FMP_REQUIRE_NVRTC=1
  export FMP_KERNEL_CACHE="${TMPDIR:-/tmp}/fmp-kernel-cache"
  export FMP_DATA="$DEV/data"
  export RUST_BACKTRACE=1
  # Let tests that use the build machine's crate path find this copy (best effort).
  local md; md=$(cat "$DEV/manifest_dir" 2>/dev/null || true)
  if [ -n "$md" ] && [ ! -e "$md" ]; then mkdir -p "$(dirname "$md")" 2>/dev/null && ln -s "$ROOT" "$md" 2>/dev/null || true; fi
  {
    echo "# device check: $(date -u +%FT%TZ)"
    echo "- GPU: $gpu"
    echo "- arch: $arch; NVRTC: $nv; commit: $(cat "$DEV/commit" 2>/dev/null)"
    echo "- host: $(nproc) cores; $(uname -r)"
  } >"$OUT/summary.md"

  local archs="$arch"; for a in sm_80 sm_90; do [ "$a" != "$arch" ] && archs="$archs,$a"; done
  step kernels 90 "$DEV/bin/fmp-engine" kernels --arch "$archs"
  step info 30 "$DEV/bin/fmp-engine" info

  # GPU tests (each binary; a failing one is rerun with synchronous launches to name the kernel).
  local t name
  for t in "$DEV"/tests/*; do
    name=$(basename "$t")
    if ! step "test-$name" 240 "$t" --test-threads=4; then
      step "test-$name-sync" 120 env FMP_SYNC_LAUNCH=1 "$t" --test-threads=1
    fi
  done
  # Engine model throughput (an ignored test of gpu_model, when present).
  if [ -x "$DEV/tests/gpu_model" ]; then
    step engine_throughput 150 env FMP_THROUGHPUT_BATCHES=128,256 "$DEV/tests/gpu_model" --ignored --exact gpu_model_throughput --nocapture
  fi
  # ---- HOOK(bench): the benchmark helper's suites. Adjust the command line here when they change.
  # Engine kernels and scan, the PyTorch peers on the same shapes / weights, the ratios appended to
  # summary.md; the JSON reports travel back as one archive (bench_results.tgz) to save file slots.
  if "$DEV/bin/fmp-engine" bench --help 2>/dev/null | grep -q kernels; then
    local py="${PYTHON:-python3}" bj="$OUT/bench_json" w="${TMPDIR:-/tmp}/fmp-bench-weights.safetensors"
    mkdir -p "$bj"
    step bench_kernels 150 "$DEV/bin/fmp-engine" bench kernels --device cuda --json "$bj/kernels-cuda.json"
    step bench_scan 90 "$DEV/bin/fmp-engine" bench scan --device cuda --channels 64 --save-weights "$w" --json "$bj/scan-cuda.json"
    step peer_conv 90 "$py" benches/peers/conv_peer.py --device cuda --json "$bj/conv-peer-cuda.json"
    step peer_frg 90 "$py" benches/peers/frg_reference.py --device cuda --channels 4 --weights "$w" --json "$bj/frg-peer-cuda.json"
    {
      echo; echo "## bench: engine vs PyTorch (convs)"
      "$py" benches/peers/compare.py kernels "$bj/kernels-cuda.json" "$bj/conv-peer-cuda.json" 2>&1
      echo; echo "## bench: engine vs PyTorch (FRG scan)"
      "$py" benches/peers/compare.py scan "$bj/scan-cuda.json" "$bj/frg-peer-cuda.json" 2>&1
      echo; grep -h '^#' "$OUT/bench_kernels.txt" "$OUT/bench_scan.txt" 2>/dev/null
    } >>"$OUT/summary.md"
    tar czf "$OUT/bench_results.tgz" -C "$OUT" bench_json bench_kernels.txt bench_scan.txt peer_conv.txt peer_frg.txt 2>/dev/null
    rm -rf "$bj" "$OUT"/peer_conv.txt "$OUT"/peer_frg.txt
  fi
  # ---- end HOOK(bench)
  step pytorch_throughput 150 "${PYTHON:-python3}" benches/peers/model_throughput.py --batch 128,256 --json "$OUT/pytorch_throughput.json"

  {
    echo; echo "## steps"; cat "$OUT/steps.md"
    echo; echo "## tests"
    for f in "$OUT"/test-*.txt; do [ -e "$f" ] && echo "- $(basename "$f" .txt): $(grep -h 'test result' "$f" | tr '\n' ' ')"; done
    for f in "$OUT"/test-*.txt; do [ -e "$f" ] && grep -h -E '^test .*FAILED|panicked|^skipping' "$f" | head -20 | sed 's/^/    /'; done
    echo; echo "## kernels ($archs)"
    echo '```'; grep -E 'SPILLS|error' "$OUT/kernels.txt" || echo "no spills, no errors"; echo '```'
    echo; echo "## engine throughput"
    echo '```'; grep -E 'img/s|images' "$OUT/engine_throughput.txt" 2>/dev/null || echo "n/a"; echo '```'
    echo; echo "## PyTorch peer"
    echo '```'; cat "$OUT/pytorch_throughput.txt" 2>/dev/null; echo '```'
    echo; echo "total $(( $(date +%s) - START ))s"
  } >>"$OUT/summary.md"
  cat "$OUT/summary.md"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
