#!/usr/bin/env bash
# Wheels and data caches for `make gpu-check` on a CUDA machine with PyTorch but no internet.
#
#   bench/gpu_wheels.sh download [DIR]   # here, with the package registries: DIR (default .gpu)
#                                        # gets wheels/ for the GPU machine's Python plus data/
#                                        # and tiktoken-cache/ copied from this machine's caches
#   bench/gpu_wheels.sh install [DIR]    # there, offline: pip install from DIR/wheels
#
# The packages are PACKAGES in bench/gpu_check.py (the one list). Set GPU_PY (default 3.12,
# the H200 machine's Python) to download for another Python version. `install` puts them into
# $PYTHON (default python3) beside what it already holds.
# GPU_HAVE names packages the GPU machine already holds (default: the large ones a CUDA
# PyTorch image such as the course's H200 one has): their wheels are deleted after the
# download so the folder fits a 64 MiB carry; set GPU_HAVE="" on a barer machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
dir=${2:-.gpu}
py=${PYTHON:-python3}
packages=$(python3 bench/gpu_check.py --list-packages)
case "$cmd" in
  download)
    mkdir -p "$dir/wheels"
    # every package and its dependencies as wheels for x86-64 Linux, CPython $GPU_PY
    "$py" -m pip download --only-binary=:all: --dest "$dir/wheels" \
      --python-version "${GPU_PY:-3.12}" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any $packages
    # torch is on the GPU machine already: a wheel of it (or of nvidia-*) would not fit a carry
    have=${GPU_HAVE-torch triton numpy pandas pyarrow matplotlib pillow fonttools contourpy kiwisolver hf-xet}
    for name in $have; do rm -f "$dir/wheels/${name//-/_}"-[0-9]*.whl; done
    rm -f "$dir"/wheels/nvidia_*.whl
    for cache in data tiktoken-cache; do
      src=${GPTCOURSE_DATA_DIR:-../shared/data}
      [ "$cache" = tiktoken-cache ] && src=${TIKTOKEN_CACHE_DIR:-../shared/tiktoken-cache}
      if [ -d "$src" ]; then mkdir -p "$dir/$cache" && cp -r "$src"/. "$dir/$cache/"; fi
    done
    du -sh "$dir"
    echo "carry $dir to the GPU machine, then run: make gpu-check GPU_DIR=$dir"
    ;;
  install)
    if [ ! -d "$dir/wheels" ]; then
      echo "gpu_wheels: no $dir/wheels folder: installing nothing (run bench/gpu_wheels.sh download first where pip works)"
      exit 0
    fi
    # offline: what is installed already stays; the rest comes from the folder
    "$py" -m pip install -q --no-index --find-links "$dir/wheels" $packages
    ;;
  *)
    echo "usage: bench/gpu_wheels.sh download|install [DIR]   (DIR default .gpu)" >&2
    exit 2
    ;;
esac
