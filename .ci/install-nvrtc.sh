# shellcheck shell=bash
# Install NVRTC 13.0 and the CUDA runtime headers from the Python package index into a cache folder
# outside the repository, then export the paths the engine and its tests use.
#
# Source it (so the exports reach the caller):   . .ci/install-nvrtc.sh
# Folder: $FMP_NVRTC_DIR, default ${XDG_CACHE_HOME:-$HOME/.cache}/fmp-engine/nvrtc (the engine also
# looks there on its own). Skips the download when the libraries are already present. On success
# it sets FMP_REQUIRE_NVRTC=1 so the NVRTC tests fail instead of skipping; on failure it warns and
# leaves the tests to skip with a printed reason.
fmp_install_nvrtc() {
  local dir="${FMP_NVRTC_DIR:-${XDG_CACHE_HOME:-${HOME:-.}/.cache}/fmp-engine/nvrtc}"
  local lib="$dir/nvidia/cu13/lib" inc="$dir/nvidia/cu13/include"
  if [ ! -e "$lib/libnvrtc.so.13" ] || [ ! -e "$inc/cuda_runtime.h" ]; then
    local py
    py="$(command -v python3 || command -v python || true)"
    if [ -z "$py" ]; then
      echo "install-nvrtc: no python to run pip; NVRTC tests will skip" >&2
      return 0
    fi
    echo "install-nvrtc: installing nvidia-cuda-nvrtc 13.0.88 + nvidia-cuda-runtime 13.0.96 into $dir" >&2
    mkdir -p "$dir"
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    if "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" \
         nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 >&2; then
      # Install into a fresh folder, then copy over (pip --target does not replace existing files).
      cp -a "$tmp"/. "$dir"/ && rm -rf "$tmp"
    else
      rm -rf "$tmp"
      echo "install-nvrtc: pip install failed; NVRTC tests will skip" >&2
      return 0
    fi
  fi
  if [ ! -e "$lib/libnvrtc.so.13" ]; then
    echo "install-nvrtc: $lib/libnvrtc.so.13 missing after install; NVRTC tests will skip" >&2
    return 0
  fi
  export FMP_NVRTC_DIR="$dir"
  export FMP_CUDA_INCLUDE="$inc"
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FMP_REQUIRE_NVRTC=1
  echo "install-nvrtc: NVRTC ready in $lib" >&2
}
fmp_install_nvrtc
unset -f fmp_install_nvrtc
