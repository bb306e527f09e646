#!/usr/bin/env bash
# Run lifecycle through the real binary: SIGTERM stops after a checkpoint (exit 3) and the
# same command resumes; kill -9 at a random moment and resume; both end bit-identical to an
# uninterrupted run (one thread). A second signal exits at once, leaving a loadable checkpoint.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); [[ -n ${KEEP_TMP:-} ]] && echo "keeping $tmp" || trap 'rm -rf "$tmp"' EXIT
source "$SRC/tests/e2e/lib/common.bash"
cd "$SRC"
make_tiny_setup "$AGATE" "$tmp" || { echo "FAIL setup"; exit 1; }
"$AGATE" train recipes/tiny/pretrain.yaml model.path="$tmp/base" run.dir="$tmp/pre" data.train="$tmp/data/train" \
  data.val="" data.seq_len=32 train.steps=60 optim.lr=1e-2 >/dev/null 2>&1
check "base model" "[[ -f $tmp/pre/model/model.safetensors ]]"

# cpt_args RUN_DIR: 300 steps, checkpoints every 10, one thread (so runs are bit-reproducible).
cpt_args() {
  args=(train recipes/tiny/cpt.yaml model.path="$tmp/pre/model" run.dir="$1" data.train="$tmp/data/train"
        data.val="" data.seq_len=64 train.global_batch=16 train.steps=300 checkpoint.every_steps=10
        train.log_every=10 run.threads=1)
}
cpt() { cpt_args "$1"; "$AGATE" "${args[@]}"; }
# Started directly (not through a function or subshell) so that $! is agate itself.
cpt_bg() { cpt_args "$1"; "$AGATE" "${args[@]}" >"$2" 2>&1 & pid=$!; }
wait_for_checkpoint() { for _ in $(seq 1 600); do [[ -n $(ls "$1/checkpoints" 2>/dev/null | grep step_) ]] && return 0; sleep 0.05; done; return 1; }

cpt "$tmp/ref" >"$tmp/ref.log" 2>&1
check "uninterrupted run" "[[ $? == 0 && -f $tmp/ref/trainable.safetensors ]]"

# SIGTERM: finish the step, checkpoint, exit 3; then resume with the same command.
cpt_bg "$tmp/term" "$tmp/term.log"
wait_for_checkpoint "$tmp/term"; sleep 0.3
kill -TERM $pid; wait $pid; rc=$?
check "SIGTERM exits with status 3" "[[ $rc == 3 ]]"
check "SIGTERM stopped early, after a checkpoint" "grep -q 'stopped by signal 15' $tmp/term.log && [[ ! -e $tmp/term/trainable.safetensors ]]"
cpt "$tmp/term" >"$tmp/term2.log" 2>&1
check "resume after SIGTERM" "[[ $? == 0 ]] && grep -q 'resuming from' $tmp/term2.log"
check "SIGTERM + resume is bit-identical" "cmp -s $tmp/ref/trainable.safetensors $tmp/term/trainable.safetensors"

# kill -9 at a random moment after the first checkpoint.
cpt_bg "$tmp/kill" "$tmp/kill.log"
wait_for_checkpoint "$tmp/kill"; sleep "0.$((RANDOM % 9 + 1))"
kill -9 $pid; wait $pid 2>/dev/null
cpt "$tmp/kill" >"$tmp/kill2.log" 2>&1
check "resume after kill -9" "[[ $? == 0 ]] && grep -q 'resuming from' $tmp/kill2.log"
check "kill -9 + resume is bit-identical" "cmp -s $tmp/ref/trainable.safetensors $tmp/kill/trainable.safetensors"
check "metrics after resume match" "python3 - <<PY
import json
def load(p): return [{k: v for k, v in json.loads(l).items() if k != 'tokens_per_s'} for l in open(p)]
a, b = load('$tmp/ref/metrics.jsonl'), load('$tmp/kill/metrics.jsonl')
assert a == b, (len(a), len(b))
PY"

# Two signals: exit at once (128 + 15), and the newest complete checkpoint still loads.
cpt_bg "$tmp/twice" "$tmp/twice.log"
wait_for_checkpoint "$tmp/twice"
kill -TERM $pid; sleep 0.05; kill -TERM $pid; wait $pid; rc=$?
check "second signal exits at once (status 143)" "[[ $rc == 143 ]]"
cpt "$tmp/twice" >"$tmp/twice2.log" 2>&1
check "resume after two signals" "[[ $? == 0 ]] && cmp -s $tmp/ref/trainable.safetensors $tmp/twice/trainable.safetensors"

"$AGATE" train recipes/tiny/cpt.yaml model.path="$tmp/pre/model" run.dir="$tmp/ref" data.train="$tmp/data/train" data.val="" --fresh >"$tmp/o" 2>&1
check "--fresh refuses an existing run (exit 2)" "[[ $? == 2 ]] && grep -q 'already holds a run' $tmp/o"
# A full disk while checkpointing: a clear error, and the previous checkpoint stays valid.
mnt="$tmp/small"; mkdir -p "$mnt"
if [[ $(id -u) == 0 ]] && mount -t tmpfs -o size=420k tmpfs "$mnt" 2>/dev/null; then
  cpt "$mnt/run" >"$tmp/full.log" 2>&1; rc=$?
  check "full disk: exit 1 with a clear error" "[[ $rc == 1 ]] && grep -qi 'no space left' $tmp/full.log"
  cp -r "$mnt/run" "$tmp/full"; umount "$mnt"
  check "full disk: no half-written checkpoint is listed" "[[ -z \$(ls $tmp/full/checkpoints | grep -v step_) ]] || ! ls $tmp/full/checkpoints/.tmp_* >/dev/null 2>&1"
  cpt "$tmp/full" >"$tmp/full2.log" 2>&1
  check "full disk: the previous checkpoint resumes to the same result" "[[ $? == 0 ]] && grep -q 'resuming from' $tmp/full2.log && cmp -s $tmp/ref/trainable.safetensors $tmp/full/trainable.safetensors"
else
  echo "skip full-disk check (needs root and tmpfs)"
fi
finish lifecycle
