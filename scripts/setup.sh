#!/usr/bin/env bash
# Installs every build and test dependency of agate from Debian 12 packages.
# Idempotent: returns in well under a second when everything is already installed.
# Usage: scripts/setup.sh [--with-python]   (--with-python adds Debian's python3-torch and python3-matplotlib for tools/)
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config ccache git python3
  libtorch-dev libgloo-dev libopenblas0-openmp
  libsentencepiece-dev sentencepiece
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev googletest nlohmann-json3-dev zlib1g-dev
)
if [[ "${1:-}" == "--with-python" || "${AGATE_WITH_PYTHON:-0}" == "1" ]]; then
  PKGS+=(python3-torch python3-numpy python3-matplotlib)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "[setup] all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "[setup] error: need root or sudo to install: ${missing[*]}" >&2; exit 1
  fi
fi

echo "[setup] installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[setup] done"
