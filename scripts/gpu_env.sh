# Sourced by the scripts that run the carried gpu-bundle/ on a GPU machine (scripts/test_gpu.sh,
# scripts/gpu_smollm2.sh): checks the bundle and the glibc, and points the dynamic linker at
# the bundle's libraries, the machine's own torch and its NVIDIA wheels. Expects PY (python with
# torch) and BUNDLE (the bundle folder); sets AGATE (the bundled binary) and AGATE_SPM_SHIM.
[[ -x $BUNDLE/bin/agate ]] || { echo "[gpu] error: no $BUNDLE/bin/agate: run scripts/gpu_bundle.sh on the build machine and carry $BUNDLE/" >&2; exit 2; }
need=$(cat "$BUNDLE/GLIBC" 2>/dev/null || echo 0)
have=$(ldd --version 2>/dev/null | sed -n 1p | awk '{print $NF}')
if [[ $(printf '%s\n%s\n' "$need" "$have" | sort -V | sed -n 1p) != "$need" ]]; then
  echo "[gpu] error: the bundle needs glibc >= $need, this machine has $have: build here instead (see README, GPU)" >&2; exit 2
fi
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || {
  echo "[gpu] error: $PY cannot import torch" >&2; exit 2; }
nv_libs=$("$PY" - <<'PY'
import glob, os, site
dirs = []
for s in site.getsitepackages():
    dirs += glob.glob(os.path.join(s, "nvidia", "*", "lib")) + glob.glob(os.path.join(s, "nvidia", "cu*", "lib"))
print(":".join(sorted(set(dirs))))
PY
)
export LD_LIBRARY_PATH="$PWD/$BUNDLE/lib:$torch_lib:$nv_libs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export AGATE_SPM_SHIM="$PWD/$BUNDLE/lib/libagate_spm.so"
AGATE="$PWD/$BUNDLE/bin/agate"
