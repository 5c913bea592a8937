#!/usr/bin/env bash
# TPU VM pod slice: create (with retry), set up every worker, run on all workers, logs,
# stop, delete. Every command acts on all workers of the slice (--worker=all).
#
#   launch/tpu_vm.sh create                  # retries until capacity is granted
#   launch/tpu_vm.sh setup                   # copy this checkout + pip install on all workers
#   launch/tpu_vm.sh run -- --config configs/sdar_4b_math.py --config.workdir=gs://b/run ...
#   launch/tpu_vm.sh logs                    # tail every worker's log (or: fetch)
#   launch/tpu_vm.sh stop                    # stop the run on all workers
#   launch/tpu_vm.sh delete                  # delete the slice
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-8, v5p-16), RUNTIME (TPU
# software version), PROJECT (optional), SPOT=1 for spot capacity, CREATE_TRIES,
# CREATE_WAIT (seconds between tries), REMOTE_DIR (checkout on the workers).
set -euo pipefail

TPU_NAME=${TPU_NAME:-t3d}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
CREATE_TRIES=${CREATE_TRIES:-60}
CREATE_WAIT=${CREATE_WAIT:-60}
REMOTE_DIR=${REMOTE_DIR:-t3d_jax}
JAX_SPEC=${JAX_SPEC:-jax[tpu]>=0.10.2,<0.11}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

gc() {  # gcloud compute tpus tpu-vm <verb> <name> --zone [--project] ...
  local verb=$1; shift
  gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"} "$@"
}

on_all() {  # run a shell command on every worker
  gc ssh --worker=all --command="$1"
}

create() {
  local extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  for ((i = 1; i <= CREATE_TRIES; i++)); do
    if gc create --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${extra[@]}"; then
      echo "created $TPU_NAME ($ACCELERATOR) in $ZONE"; return 0
    fi
    if gc describe >/dev/null 2>&1; then  # a half-created slice blocks the name: remove it
      echo "create failed but $TPU_NAME exists; deleting before the next try" >&2
      gc delete --quiet || true
    fi
    echo "try $i/$CREATE_TRIES failed (capacity?); retrying in ${CREATE_WAIT}s" >&2
    sleep "$CREATE_WAIT"
  done
  echo "could not create $TPU_NAME after $CREATE_TRIES tries" >&2; return 1
}

setup() {
  local tgz
  tgz=$(mktemp -d)/t3d_jax.tar.gz
  # tracked and untracked-but-not-ignored files (no venvs, caches, workdirs)
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
     tar --null --ignore-failed-read -czf "$tgz" -T -)
  gc scp --worker=all "$tgz" "$TPU_NAME:~/t3d_jax.tar.gz"
  on_all "set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR ~/t3d_logs && \
    tar -C ~/$REMOTE_DIR -xzf ~/t3d_jax.tar.gz && \
    (test -x ~/venv/bin/python || python3 -m venv ~/venv) && \
    ~/venv/bin/pip install -q -U pip && \
    ~/venv/bin/pip install -q -e ~/$REMOTE_DIR '$JAX_SPEC' && \
    ~/venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
}

run() {  # arguments after -- go to python -m t3d_jax.main
  [[ "${1:-}" == "--" ]] && shift
  [[ $# -gt 0 ]] || { echo "usage: $0 run -- --config configs/X.py [--config.k=v ...]" >&2; exit 2; }
  local args
  args=$(printf '%q ' "$@")
  # detached, so the job survives the ssh session; one log per worker
  on_all "cd ~/$REMOTE_DIR && mkdir -p ~/t3d_logs && \
    nohup ~/venv/bin/python -m t3d_jax.main $args --config.jax_distributed=true \
      > ~/t3d_logs/worker-\$(hostname).log 2>&1 < /dev/null & echo \$! > ~/t3d_logs/run.pid; \
    echo \"\$(hostname): started pid \$(cat ~/t3d_logs/run.pid)\""
}

logs() {
  case "${1:-tail}" in
    tail) on_all "tail -n ${LINES:-20} ~/t3d_logs/worker-*.log" ;;
    fetch) mkdir -p logs && gc scp --worker=all "$TPU_NAME:~/t3d_logs/worker-*.log" logs/ \
             && ls -l logs/ ;;
    *) echo "usage: $0 logs [tail|fetch]" >&2; exit 2 ;;
  esac
}

stop() {  # stop the job started by `run` (its recorded pid) on every worker
  on_all "test -f ~/t3d_logs/run.pid && kill \$(cat ~/t3d_logs/run.pid) 2>/dev/null; \
    rm -f ~/t3d_logs/run.pid; echo \"\$(hostname): stopped\""
}

delete() { gc delete --quiet; }

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  logs) logs "$@" ;;
  stop) stop ;;
  delete) delete ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
