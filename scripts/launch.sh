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
remaining=$n
running=("${pids[@]}")
while ((remaining > 0)); do
  wait -n -p done_pid "${running[@]}"; rc=$?
  [[ -z ${done_pid:-} ]] && continue  # a trapped signal interrupted wait
  remaining=$((remaining - 1))
  left=(); for p in "${running[@]}"; do [[ $p != "$done_pid" ]] && left+=("$p"); done; running=("${left[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "[launch] a rank (pid $done_pid) exited with status $rc; stopping the others" >&2
    sleep 1; forward TERM
  fi
  done_pid=
done
exit $status
