"""The agate_gates Python package (python/) and its kvpress AgatePress against agate.

Run by ctest as `python SCRIPT AGATE_BINARY SOURCE_DIR`: puts SOURCE_DIR/python on sys.path
(installs nothing) and runs python/tests/test_agate_gates.py, which compares AgatePress's kept
flags with `agate generate --policy gate-post --flags-out` (identical, both gate types), its
continuation log-likelihoods with `agate score --context N --policy gate-post`, the fixed-ratio
mode, AdaKVPress, kvpress's pipeline, and every refusal of the export loader. Skips (77) without
torch, safetensors, transformers or kvpress.
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_lib  # noqa: E402

agate_bin, src = oracle_lib.args()
oracle_lib.require("torch", "safetensors", "transformers", "kvpress", "tokenizers")
sys.path.insert(0, os.path.join(src, "python", "tests"))
os.environ["AGATE_BIN"] = os.path.abspath(agate_bin)
import test_agate_gates  # noqa: E402

sys.exit(test_agate_gates.main([sys.argv[0], os.path.abspath(agate_bin)]))
