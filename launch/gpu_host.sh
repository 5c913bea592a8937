#!/usr/bin/env bash
# One GPU host, all its GPUs in one process (JAX drives every local GPU; no distributed
# init). The mesh's -1 axis takes the GPU count, e.g. --config.mesh.shape.fsdp=-1.
#
#   launch/gpu_host.sh setup                       # venv + jax[cuda12] + this package
#   launch/gpu_host.sh run -- --config configs/sdar_1p7b_math.py \
#       --config.mesh.shape.fsdp=-1 --config.workdir=/data/run ...
#
# Settings (environment): VENV (default .venv-gpu), JAX_SPEC, LOG (default
# <workdir-less> logs/gpu-<date>.log), MEM_FRACTION (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.9).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv-gpu}
JAX_SPEC=${JAX_SPEC:-jax[cuda12]>=0.10.2,<0.11}

setup() {
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  "$VENV/bin/pip" install -q -e "$ROOT" "$JAX_SPEC"
  "$VENV/bin/python" -c 'import jax; print(jax.devices())'
}

run() {
  [[ "${1:-}" == "--" ]] && shift
  [[ $# -gt 0 ]] || { echo "usage: $0 run -- --config configs/X.py [--config.k=v ...]" >&2; exit 2; }
  mkdir -p "$ROOT/logs"
  local log=${LOG:-$ROOT/logs/gpu-$(date +%Y%m%d-%H%M%S).log}
  echo "log: $log"
  cd "$ROOT"
  XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.9} \
    "$VENV/bin/python" -m t3d_jax.main "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup) setup ;;
  run) run "$@" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
