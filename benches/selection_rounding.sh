#!/usr/bin/env bash
# Does a change of rounding change the FRG selection? Scans each model with each recipe under three
# CPU kernel settings that sum in different orders -- the default (direct convolutions, the widest
# ISA), the direct convolutions held to AVX2 (FMP_CPU_KERNEL=avx2: other register tiles, other
# summation order) and the Winograd convolutions (FMP_CPU_CONV=winograd) -- with the same seed, and
# prints, per pair, the maps selected in common and the scores that differ (compare_selections.py).
# The question it answers: is Winograd's rounding any different in kind from the rounding
# differences the direct path already has between machines?
#
#   benches/selection_rounding.sh OUTDIR MODEL.safetensors [MODEL ...]
#
# Environment: RECIPES (default "paper margin4"), SEED (default 0), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$1"; shift
PY="${PYTHON:-python3}"
E=target/release/fmp-engine
cargo build --release --bin fmp-engine
mkdir -p "$OUT"
for m in "$@"; do
  b=$(basename "$m" .safetensors)
  for r in ${RECIPES:-paper margin4}; do
    for v in default avx2 winograd; do
      env=()
      [ "$v" = avx2 ] && env=(FMP_CPU_KERNEL=avx2)
      [ "$v" = winograd ] && env=(FMP_CPU_CONV=winograd)
      rep="$OUT/$b-$r-$v.json"
      [ -f "$rep" ] || env "${env[@]}" "$E" scan "$m" --device cpu --recipe "$r" --seed "${SEED:-0}" \
        --out "$rep" >"$OUT/$b-$r-$v.log" 2>&1
    done
    for pair in "default avx2" "default winograd" "avx2 winograd"; do
      set -- $pair
      echo "$b $r: $1 vs $2: $("$PY" benches/peers/compare_selections.py "$OUT/$b-$r-$1.json" "$OUT/$b-$r-$2.json")"
    done
  done
done | tee "$OUT/summary.txt"
