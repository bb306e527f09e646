#!/usr/bin/env bash
# Everything a GPU machine can check that a CPU machine cannot, on a machine whose Python
# already has torch 2.11.0+cu130 and which can download nothing:
#   1. the build: agate --version names the CUDA kernels and sees a GPU;
#   2. the unit suite with its CUDA cases live (keep-step kernel vs its CPU twin, gates,
#      TrainStep on cuda vs cpu, model logits cuda vs cpu in float32 and bfloat16);
#   3. end to end on cuda:0: gate training, resume (within tolerance of an uninterrupted
#      run), eval and generate over the ragged cache, bench lines (matmul peak, train, decode);
#   4. two NCCL ranks on one GPU (NCCL may refuse two ranks per device: reported, not failed);
#   5. with ATTENTION_BENCH=DIR: tools/bench/attention.sh on the GPU (agate's flash kernel against
#      eager, torch.compile, SDPA with a float mask, FlexAttention and SDPA causal on the same card),
#      results and table in DIR; SEQS, DTYPES, MODES, PEERS, ROUNDS, ITERS as attention.sh takes
#      them (GPU defaults below), BENCH_TIMEOUT (s, default 600) bounds the whole benchmark;
#   6. with MODEL_CONFIG=config.json: `agate bench train` (gated step against the frozen step) on a
#      randomly initialised model of that shape, in TRAIN_DTYPES (bfloat16 float32), at TRAIN_SEQS
#      (1024 4096). NCCL_PAIR=0 skips 4; UNIT_REST=0 runs only the CUDA cases of 2.
#
#   scripts/gpu_bundle.sh        (here, on the build machine; carry gpu-bundle/ along)
#   scripts/test_gpu.sh          (there)      Env: PYTHON (default python3), BUNDLE (gpu-bundle),
#                                             UNIT_TIMEOUT (s, default 600), ATTENTION_BENCH
#
# Without a GPU it still runs (1)-(3) on the CPU with the CUDA cases skipped, which checks the
# bundle itself; it says so at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-gpu-bundle}
source scripts/gpu_env.sh
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
section() { echo; echo "== $* =="; }

section "1. build"
info=$("$AGATE" --version) || { echo "[gpu] error: $AGATE does not start (missing library?)"; ldd "$AGATE" | grep "not found"; exit 1; }
echo "$info"
gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
check "CUDA kernels compiled" "[[ '$info' == *'CUDA kernels compiled'* ]]"
if [[ $gpus -gt 0 ]]; then
  DEV=cuda
  check "agate sees the GPU(s) torch sees ($gpus)" "[[ '$info' == *' $gpus CUDA device'* ]]"
  "$PY" -c 'import torch; print(torch.cuda.get_device_name(0), torch.__version__)'
else
  DEV=cpu
  echo "(no GPU here: the CUDA cases skip; this run checks the bundle on the CPU)"
fi

section "2. unit suite (CUDA cases live where a GPU is)"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
# The CUDA cases first, printed in full, so that a hang later in the suite cannot hide them.
cuda_cases='*Cuda*:*CUDA*'
AGATE_SOURCE_DIR="$PWD" timeout "${UNIT_TIMEOUT:-600}" "$BUNDLE/bin/agate_tests" --gtest_filter="$cuda_cases" \
  >"$out/cuda.log" 2>&1
cuda_rc=$?
grep -E "^\[ +(OK|FAILED|SKIPPED) +\]" "$out/cuda.log" | sort -u
[[ $cuda_rc == 0 ]] || grep -vE "^\[ +(OK|RUN|SKIPPED) +\]" "$out/cuda.log" | cut -c1-300 | head -120
check "CUDA cases" "[[ $cuda_rc == 0 ]]"
if [[ ${UNIT_REST:-1} == 0 ]]; then
  echo "(the rest of the unit suite skipped: UNIT_REST=0; CI runs it on the CPU)"
else
  AGATE_SOURCE_DIR="$PWD" timeout "${UNIT_TIMEOUT:-600}" "$BUNDLE/bin/agate_tests" --gtest_filter="-$cuda_cases" \
    --gtest_brief=1 >"$out/unit.log" 2>&1; rc=$?
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]" "$out/unit.log" | sort | uniq -c | head -40
  check "unit suite (the rest)" "[[ $rc == 0 ]]"
  [[ $rc == 0 ]] || grep -B2 -A8 "Failure" "$out/unit.log" | head -60
fi

section "3. end to end on $DEV"
failed_before=$fail
source tests/e2e/lib/common.bash  # (re)defines check and resets fail: keep what failed above
fail=$failed_before
make_tiny_setup "$AGATE" "$out" >/dev/null 2>&1
check "tiny corpus and datasets" "[[ -f $out/data/train/manifest.json ]]"
common="data.train=$out/data/train data.val=$out/data/val data.seq_len=64 train.log_every=10 run.device=$DEV"
"$AGATE" train recipes/tiny/pretrain.yaml $common model.path="$out/base" run.dir="$out/pre" train.steps=40 \
  optim.lr=1e-2 eval.every=40 >"$out/pre.log" 2>&1
check "pretrain on $DEV" "[[ $? == 0 && -f $out/pre/model/model.safetensors ]]"
cp "$out/tok.model" "$out/pre/model/tokenizer.model"
gates="$common model.path=$out/pre/model train.steps=20 checkpoint.every_steps=10 eval.every=20"
"$AGATE" train recipes/tiny/cpt.yaml $gates run.dir="$out/full" >"$out/full.log" 2>&1
check "gate training on $DEV" "[[ $? == 0 ]]"
"$AGATE" train recipes/tiny/cpt.yaml $gates run.dir="$out/part" train.steps=10 >/dev/null 2>&1 &&
  "$AGATE" train recipes/tiny/cpt.yaml $gates run.dir="$out/part" >"$out/part.log" 2>&1
check "resumed run ends where the uninterrupted one ends (1e-4)" "$PY - '$out/full/summary.json' '$out/part/summary.json' <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
d = abs(a['val_loss'] - b['val_loss'])
print(f'     val loss {a[\"val_loss\"]:.6f} vs {b[\"val_loss\"]:.6f} (diff {d:.2e})')
sys.exit(d > 1e-4)
PY"
"$AGATE" export "$out/full" --out "$out/export" --device "$DEV" >/dev/null 2>&1
check "export on $DEV" "[[ $? == 0 && -f $out/export/gates.safetensors ]]"
"$AGATE" eval --model "$out/pre/model" --gates "$out/export" --task ppl --data "$out/data/val" --context 48 --continuation 16 --window 8 \
  --samples 4 --keep 0.5 --device "$DEV" >"$out/eval.md" 2>"$out/eval.log"
check "eval on $DEV (every policy)" "[[ $? == 0 ]] && grep -q '| snapkv |' $out/eval.md"
"$AGATE" generate --model "$out/pre/model" --gates "$out/export" --max-new 16 --device "$DEV" \
  --prompt "Anne walked to Barton with" >"$out/gen.txt" 2>&1
check "generate on $DEV" "[[ $? == 0 ]] && grep -q '^\[kv\]' $out/gen.txt"
for b in "matmul --dtype bfloat16 --iters 3" "train --model $out/pre/model --seq 64 --batch 4 --iters 3" \
         "decode --model $out/pre/model --contexts 128 --keeps 1.0,0.5 --new 16"; do
  "$AGATE" bench $b --device "$DEV" 2>/dev/null | tee -a "$out/bench.jsonl" | cut -c1-200
done
check "bench lines" "[[ -s $out/bench.jsonl ]]"

section "4. two NCCL ranks on one GPU"
if [[ ${NCCL_PAIR:-1} == 0 ]]; then
  echo "(skipped: NCCL_PAIR=0)"
elif [[ $DEV == cuda ]]; then
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 \
      "$AGATE" train recipes/tiny/cpt.yaml $gates run.dir="$out/nccl" train.steps=10 dist.backend=nccl \
      dist.timeout_s=60 >"$out/nccl$r.log" 2>&1 &
  done
  wait
  if grep -q "trained 10 steps" "$out/nccl0.log"; then echo "ok   2 NCCL ranks on one GPU trained"
  else echo "note: NCCL with two ranks on one GPU did not run here (often refused by NCCL itself):"; tail -3 "$out/nccl0.log"; fi
else
  echo "(skipped: no GPU)"
fi

if [[ -n ${ATTENTION_BENCH:-} ]]; then
  section "5. gated attention benchmark on $DEV"
  DEVICE=$DEV AGATE="$AGATE" AGATE_PYTHON="$PY" OUT="$ATTENTION_BENCH" KERNELS=flash \
    SEQS=${SEQS:-"1024 8192"} DTYPES=${DTYPES:-bfloat16} MODES=${MODES:-"forward train"} ROUNDS=${ROUNDS:-2} \
    ITERS=${ITERS:-10} PEERS=${PEERS:-"eager compile sdpa-mask flex sdpa-causal"} MAX_GB=${MAX_GB:-64} \
    THREADS=${THREADS:-8} RUN_TIMEOUT=${RUN_TIMEOUT:-120} \
    timeout "${BENCH_TIMEOUT:-600}" tools/bench/attention.sh >/dev/null
  echo "(attention.sh exit $?; a timeout leaves the rounds it finished)"
  "$PY" tools/bench/attention_table.py "$ATTENTION_BENCH/results.jsonl" | tee "$ATTENTION_BENCH/table.md"
fi

if [[ -n ${MODEL_CONFIG:-} ]]; then
  section "6. gate training step on a randomly initialised model of $MODEL_CONFIG on $DEV"
  "$AGATE" init-model --config "$MODEL_CONFIG" --out "$out/big" --dtype bfloat16 >/dev/null &&
    for T in ${TRAIN_SEQS:-1024 4096}; do
      for dt in ${TRAIN_DTYPES:-bfloat16 float32}; do
        "$AGATE" bench train --model "$out/big" --seq "$T" --batch 1 --iters 5 --dtype "$dt" --device "$DEV" 2>/dev/null
      done
    done | tee "$out/big.jsonl" | cut -c1-400
  check "gate training step on the model (bench train)" "[[ -s $out/big.jsonl ]]"
  [[ -n ${ATTENTION_BENCH:-} ]] && cp "$out/big.jsonl" "$ATTENTION_BENCH/train_step.jsonl"
fi

echo
if [[ $fail == 0 ]]; then echo "test_gpu: all checks passed on $DEV"; else echo "test_gpu: FAILED (logs in the output above)"; fi
exit $fail
