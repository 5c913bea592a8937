#!/usr/bin/env bash
# The GPU check, as one prepared run of a few minutes on one GPU (H100/H200):
#   1. decoding: `bench sampler` on a random SDAR-4B-shaped model (configs/sdar_4b_math.py's
#      ARCH_4B) in bf16, batch 128, block 4, 4 and 1 steps per block, fused commit,
#      attention dense, then cudnn: tok/s (JetEngine publishes 5000+ tok/s for SDAR-4B on one
#      H200 at block 4, batch 128) and decode MFU against a bf16 matmul measured in the run;
#   2. training: `bench step` on a random SDAR-1.7B-shaped model (ARCH_1P7B; 4B's fp32
#      params + AdamW + the reference would not fit 78 GiB) in bf16 compute, fp32 params,
#      dense, then cudnn: s/update and MFU.
#
#   launch/gpu_bench.sh [OUTDIR]          # PYTHON (default python3) must import jax with
#                                         # a GPU backend and this package's dependencies
#   SHAPE=tiny launch/gpu_bench.sh DIR    # the same commands on a tiny model (CPU check)
#   BENCHES="sampler-dense step-cudnn" launch/gpu_bench.sh   # a subset (default: all four)
#
# Each bench's output is tee'd to OUTDIR (default: $OUT where set, else logs/gpu-bench-<date>)
# as it runs, so a run cut short keeps what finished; a failing bench does not stop the
# others. Exit status: 0 if every bench passed, else 1 (the failures are named).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DIR=${1:-${OUT:-$ROOT/logs/gpu-bench-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$DIR"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.9}

# model shapes: --vocab --hidden --intermediate --layers --heads --kv-heads --head-dim
case ${SHAPE:-sdar} in
  sdar)
    DECODE_MODEL=(151936 2560 9728 36 32 8 128)   # ARCH_4B (tests/test_launch_gpu_bench.py)
    STEP_MODEL=(151936 2048 6144 28 16 8 128)     # ARCH_1P7B
    TIE=(--tie)                                    # both tie_word_embeddings
    DECODE_RUN=(--batch 128 --prompt-min 64 --prompt-max 128 --max-new 256 --repeats 3)
    STEP_RUN=(--batch 8 --micro 4 --l0 256 --l1 512 --block 4 --updates 3) ;;
  tiny)
    DECODE_MODEL=(512 64 128 2 4 2 16)
    STEP_MODEL=(512 64 128 2 4 2 16)
    TIE=()
    DECODE_RUN=(--batch 4 --prompt-min 8 --prompt-max 16 --max-new 16 --repeats 1)
    STEP_RUN=(--batch 2 --micro 1 --l0 16 --l1 32 --block 4 --updates 1) ;;
  *) echo "gpu_bench.sh: SHAPE must be sdar or tiny, got '$SHAPE'" >&2; exit 2 ;;
esac

model_flags() {
  local names=(--vocab --hidden --intermediate --layers --heads --kv-heads --head-dim) i
  for i in "${!names[@]}"; do printf '%s\n%s\n' "${names[$i]}" "$1"; shift; done
}
mapfile -t DECODE_FLAGS < <(model_flags "${DECODE_MODEL[@]}")
mapfile -t STEP_FLAGS < <(model_flags "${STEP_MODEL[@]}")
DECODE_FLAGS+=("${TIE[@]}") STEP_FLAGS+=("${TIE[@]}")

cd "$ROOT"
"$PY" -c 'import jax; print("devices:", jax.devices())' 2>&1 | tee "$DIR/devices.txt" || exit 1
failed=()
for bench in ${BENCHES:-sampler-dense sampler-cudnn step-dense step-cudnn}; do
  kernel=${bench#*-}
  case $bench in
    sampler-*) args=(sampler "${DECODE_FLAGS[@]}" "${DECODE_RUN[@]}" --block 4 --steps 4,1
                     --modes fused --naive-steps "") ;;
    step-*) args=(step "${STEP_FLAGS[@]}" "${STEP_RUN[@]}") ;;
    *) echo "gpu_bench.sh: unknown bench '$bench'" >&2; exit 2 ;;
  esac
  "$PY" -m t3d_jax.bench "${args[@]}" --dtype bfloat16 --attention "$kernel" 2>&1 \
      | tee "$DIR/$bench.txt" || failed+=("$bench")
done
echo "gpu_bench.sh: results in $DIR${failed[*]:+; failed: ${failed[*]}}"
[[ ${#failed[@]} -eq 0 ]]
