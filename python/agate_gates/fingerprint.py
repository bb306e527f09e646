"""agate's fingerprint of a base model's weights folder (the definition in src/model/inspect.cpp).

Shared by the agate_gates package and tools/kvgate_reference.py; standard library only.
"""

from __future__ import annotations

import glob
import os
import struct
import zlib


def weights_fingerprint(model_dir: str) -> str:
    """agate's fingerprint of a model folder (src/model/inspect.cpp): CRC-32 over config.json,
    then per *.safetensors file (sorted) its header, its size (u64 LE) and its data (for data
    over 64 MiB: the first and last 4 MiB and 256 evenly spaced 4 KiB blocks)."""
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        crc = zlib.crc32(f.read())
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            first = f.read(8)
            n = struct.unpack("<Q", first)[0] if len(first) == 8 else 0
            head = min(size, 8 + n)
            f.seek(0)
            crc = zlib.crc32(f.read(head), crc)
            crc = zlib.crc32(struct.pack("<Q", size), crc)
            body = size - head
            if body <= 64 << 20:
                crc = zlib.crc32(f.read(body), crc)
            else:
                edge, block = 4 << 20, 4096
                for off, n_bytes in [(0, edge), (body - edge, edge)] + [
                        ((body - block) // 255 * i, block) for i in range(256)]:
                    f.seek(head + off)
                    crc = zlib.crc32(f.read(n_bytes), crc)
    return f"0x{crc:08x}"
