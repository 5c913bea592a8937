#!/usr/bin/env bash
# Local multi-process test of the multi-host path: N processes on this machine, a local
# coordinator on 127.0.0.1, CPU collectives (gloo), D fake CPU devices per process.
# Every process runs the same command, as every worker of a TPU pod would.
#
#   launch/cpu_multiprocess.sh [-n 2] [-d 4] [-p PORT] [-l LOGDIR] -- \
#       --config configs/demo.py --config.mesh.shape.data=-1
#
# Logs: LOGDIR/process-<i>.log (default logs/cpu-mp). Exits non-zero if any process fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=2; D=4; PORT=""; LOGDIR="$ROOT/logs/cpu-mp"
PY=${PYTHON:-python3}
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -d) D=$2; shift 2 ;;
    -p) PORT=$2; shift 2 ;;
    -l) LOGDIR=$2; shift 2 ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
  esac
done
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { sed -n '2,10p' "$0" >&2; exit 2; }
if [[ -z "$PORT" ]]; then
  PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
mkdir -p "$LOGDIR"
cd "$ROOT"

pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES=$N JAX_PROCESS_ID=$i \
    "$PY" -m t3d_jax.main "$@" --config.jax_distributed=true \
    > "$LOGDIR/process-$i.log" 2>&1 &
  pids+=($!)
done
echo "started $N processes x $D devices (coordinator 127.0.0.1:$PORT), logs in $LOGDIR"

stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM
status=0
declare -A running=()
for i in "${!pids[@]}"; do running[${pids[$i]}]=$i; done
while ((${#running[@]} > 0)); do  # whichever process ends first (bash >= 5.1: wait -n -p)
  rc=0
  wait -n -p done "${!running[@]}" || rc=$?
  i=${running[$done]}
  unset "running[$done]"
  if ((rc != 0)); then
    echo "process $i failed (exit $rc); see $LOGDIR/process-$i.log" >&2
    status=1
    stop_all  # the others would wait for it at the next collective
    wait || true
    break
  fi
done
[[ $status == 0 ]] && echo "all $N processes finished"
exit $status
