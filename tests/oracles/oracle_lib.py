"""Shared plumbing for the oracle tests (tests/oracles/*_oracle.py).

Each oracle script is run by ctest as `python SCRIPT AGATE_BINARY SOURCE_DIR` and compares the
`agate` binary with an external implementation (transformers, tokenizers, kvpress). A script
exits with SKIP (77, ctest's SKIP_RETURN_CODE) and a one-line reason when what it needs is absent.
"""
import json
import os
import subprocess
import sys

SKIP = 77
# Offline and quiet: no hub lookups, no progress bars from transformers' loaders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


def require(*modules):
    """Imports the modules or skips the test, naming what is missing."""
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if missing:
        skip(f"Python packages missing: {', '.join(missing)} (run scripts/setup.sh)")


def args():
    if len(sys.argv) < 3:
        print(f"usage: {sys.argv[0]} AGATE_BINARY SOURCE_DIR", file=sys.stderr)
        sys.exit(2)
    return sys.argv[1], sys.argv[2]


def smollm2_dir(src):
    """The converted SmolLM2 folder (scripts/get_model.sh smollm2), or None."""
    d = os.path.join(src, "models", "smollm2-135m-instruct")
    return d if os.path.isfile(os.path.join(d, "model.safetensors")) else None


def agate(binary, *argv, threads=2):
    """Runs `agate ARGV [--threads N]` and returns its stdout; raises with stderr on failure."""
    cmd = [binary, *map(str, argv)] + (["--threads", str(threads)] if threads else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def agate_logprobs(binary, model_dir, tokens, dtype="float32"):
    """log p(token[t+1] | token[..t]) from `agate score`, as a list of floats."""
    out = agate(binary, "score", "--model", model_dir, "--tokens", ",".join(map(str, tokens)), "--dtype", dtype)
    return json.loads(out)["logprobs"]


class Checks:
    """Collects named pass/fail results so one run reports every failure, then exits."""

    def __init__(self):
        self.failed = []
        self.count = 0

    def check(self, ok, name, detail=""):
        self.count += 1
        print(f"[{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.failed.append(name)

    def finish(self):
        if self.failed:
            print(f"{len(self.failed)} of {self.count} checks failed: {', '.join(self.failed)}")
            sys.exit(1)
        print(f"all {self.count} checks passed")
