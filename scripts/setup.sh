#!/usr/bin/env bash
# Installs every build and test dependency of agate. Idempotent: a second run checks and returns
# in about a second.
#   - Debian 12 packages: compilers, cmake, ccache, yaml-cpp, spdlog/fmt, SentencePiece, Gloo
#     headers, GoogleTest, nlohmann-json, zlib, PCRE2 and utf8proc (the tokenizer.json backend).
#   - A project venv at .venv/ (or $AGATE_VENV) with LibTorch from the PyPI wheel torch==2.11.0
#     (the +cu130 build the GPU machines run; C++ headers, libraries and the CMake package) and
#     the pinned Python packages the tools and tests use, and python/ (agate_gates) editable.
# First run on a fresh cpp-kernels machine: ~2-3 min, ~5 GB (the CUDA wheels are most of it).
# Usage: scripts/setup.sh            (AGATE_SKIP_APT=1 skips the Debian step, e.g. on a GPU box
#                                     that has no apt; AGATE_VENV=DIR uses another venv)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
# torch: LibTorch for the build. numpy/matplotlib/safetensors: tools and fixtures.
# transformers/tokenizers/gguf/accelerate: the real model (scripts/get_model.sh) and the logits and
# tokenizer oracles. kvpress: the eviction baselines' oracle (it needs transformers < 5.3).
PY_PKGS=("torch==${TORCH_VERSION}" "numpy==2.4.6" "matplotlib==3.11.2" "safetensors==0.8.0"
         "transformers==5.2.0" "tokenizers==0.22.2" "gguf==0.19.0" "accelerate==1.15.0" "kvpress==0.5.5")

PKGS=(
  build-essential cmake pkg-config ccache git python3 python3-venv
  libgloo-dev libsentencepiece-dev sentencepiece
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev googletest nlohmann-json3-dev zlib1g-dev
  libpcre2-dev libutf8proc-dev
)

if [[ "${AGATE_SKIP_APT:-0}" != "1" ]]; then
  missing=()
  for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    echo "[setup] all ${#PKGS[@]} Debian packages present"
  else
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
      if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "[setup] error: need root or sudo to install: ${missing[*]}" >&2; exit 1
      fi
    fi
    echo "[setup] installing ${#missing[@]} Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

VENV=${AGATE_VENV:-.venv}
PY=$VENV/bin/python
stamp="$VENV/.agate-setup"
want="${PY_PKGS[*]}"
# python/ (agate_gates: the gates in PyTorch, AgatePress for kvpress), editable, offline-safe: no
# build isolation and no dependency resolution (its dependencies are the pins above). Skipped when
# the venv already imports it from this checkout.
install_agate_gates() {
  local here
  here=$("$PY" -c 'import importlib.util as u, os; s = u.find_spec("agate_gates"); print(os.path.dirname(os.path.dirname(os.path.realpath(s.origin))) if s else "")' 2>/dev/null || true)
  if [[ $here == "$(realpath python)" ]]; then
    echo "[setup] agate_gates installed (editable, python/)"
  else
    if "$PY" -m pip install -q --disable-pip-version-check -e python/ --no-build-isolation --no-deps >/dev/null 2>&1; then
      echo "[setup] installed agate_gates from python/ (editable)"
    else
      # Without network, an old setuptools with no `wheel` cannot build the editable wheel: put
      # python/ on the venv's path with a .pth file instead (what an editable install amounts to).
      site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
      realpath python >"$site/agate_gates.pth"
      echo "[setup] pip could not build agate_gates offline; added python/ to $VENV via $site/agate_gates.pth"
    fi
  fi
}

if [[ -x $PY && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  echo "[setup] venv $VENV up to date (torch $TORCH_VERSION)"
  install_agate_gates
  exit 0
fi
start=$(date +%s)
if [[ ! -x $PY ]]; then
  # Prefer a python3 that has venv + pip; Debian's needs python3-venv (installed above).
  python3 -m venv "$VENV"
fi
echo "[setup] installing into $VENV: ${PY_PKGS[*]} (first time: ~2 min, ~5 GB)"
"$PY" -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}"
"$PY" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
echo "$want" >"$stamp"
install_agate_gates
echo "[setup] venv ready in $(( $(date +%s) - start )) s: $("$PY" -c 'import torch; print(torch.__version__)')"
