#!/usr/bin/env bash
# Runs N local agate processes as one data-parallel job, without torchrun.
#   scripts/launch.sh NPROC RECIPE.yaml [key=value ...] [--dry-run|--fresh|...]
# Env: AGATE (binary, default build/agate), MASTER_PORT (default: a free-ish port), AGATE_CMD
# (subcommand, default train). Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
# MASTER_ADDR=127.0.0.1 and MASTER_PORT, exactly as torchrun would set them. SIGTERM/SIGINT are
# forwarded to every rank. If one rank fails, the others are stopped; the exit status is the
# first failing rank's (3 when the job was stopped by a signal after a checkpoint).
set -uo pipefail
if [[ $# -lt 2 || ! $1 =~ ^[0-9]+$ || $1 -lt 1 ]]; then
  echo "usage: scripts/launch.sh NPROC RECIPE.yaml [key=value ...]" >&2; exit 2
fi
n=$1; shift
AGATE=${AGATE:-$(dirname "$0")/../build/agate}
port=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    AGATE_LAUNCHER=agate "$AGATE" "${AGATE_CMD:-train}" "$@" &
  pids+=($!)
done
forward() { kill -"$1" "${pids[@]}" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward INT' INT
status=0
declare -A reaped=()
# Poll (robust to stopped children and to signals arriving mid-wait): a rank is finished when
# its process is gone or a zombie; reap it with `wait PID` to get its status.
finished() { [[ ! -e /proc/$1 ]] || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]; }
while ((${#reaped[@]} < n)); do
  for p in "${pids[@]}"; do
    [[ -n ${reaped[$p]:-} ]] && continue
    finished "$p" || continue
    wait "$p"; rc=$?
    reaped[$p]=$rc
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "[launch] a rank (pid $p) exited with status $rc; stopping the others" >&2
      forward TERM
    fi
  done
  sleep 0.2
done
exit $status
