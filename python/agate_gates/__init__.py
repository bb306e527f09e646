"""agate_gates: agate's KV-cache eviction gates (agate export) in plain PyTorch, and AgatePress for kvpress.

    from agate_gates import load_export, check_model, Gates, AgatePress
"""

from .export import GateConfig, GateExport, GateExportError, LORA_REFUSAL, check_model, load_export
from .fingerprint import weights_fingerprint
from .gates import GateModule, Gates, rope_inv_freq

__all__ = ["GateConfig", "GateExport", "GateExportError", "LORA_REFUSAL", "check_model", "load_export",
           "weights_fingerprint", "GateModule", "Gates", "rope_inv_freq", "AgatePress"]
__version__ = "0.1.0"


def __getattr__(name):  # kvpress is optional: imported only when AgatePress is asked for
    if name == "AgatePress":
        from .press import AgatePress
        return AgatePress
    raise AttributeError(name)
