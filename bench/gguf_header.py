"""The few GGUF header fields the runner needs, read by streaming the key-value section only.

Runs as a child process (`python -m bench.gguf_header FILE`) under the worker's timeout, so a FIFO, a
stalled network mount or a 2M-token vocabulary costs the runner nothing but that child. Arrays are
skipped by their lengths, never materialised.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_KV = 1 << 20


class HeaderError(ValueError):
    pass


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise HeaderError("unexpected end of file in the GGUF header")
    return data


def _u64(fh: BinaryIO) -> int:
    return int(struct.unpack("<Q", _read(fh, 8))[0])


def _string(fh: BinaryIO, limit: int = 1 << 16) -> str:
    n = _u64(fh)
    if n > limit:
        fh.seek(n, 1)
        return ""
    return _read(fh, n).decode("utf-8", "replace")


def _value(fh: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(fh, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _string(fh)
    if vtype == _ARRAY:
        etype, count = struct.unpack("<I", _read(fh, 4))[0], _u64(fh)
        if etype in _SCALARS:
            fh.seek(count * struct.calcsize(_SCALARS[etype]), 1)
        elif etype == _STRING:
            for _ in range(count):
                fh.seek(_u64(fh), 1)
        else:
            raise HeaderError(f"unsupported array element type {etype}")
        return {"array_len": count}
    raise HeaderError(f"unknown value type {vtype}")


def read_fields(fh: BinaryIO) -> dict[str, Any]:
    if _read(fh, 4) != b"GGUF":
        raise HeaderError("not a GGUF file (bad magic)")
    version = struct.unpack("<I", _read(fh, 4))[0]
    if version < 2:
        raise HeaderError(f"GGUF version {version} is too old")
    _tensors, n_kv = _u64(fh), _u64(fh)
    if n_kv > MAX_KV:
        raise HeaderError(f"implausible key-value count {n_kv}")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = _string(fh)
        fields[key] = _value(fh, struct.unpack("<I", _read(fh, 4))[0])
    return fields


def facts(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        f = read_fields(fh)
    arch = f.get("general.architecture")
    n_layer, d_model = f.get(f"{arch}.block_count"), f.get(f"{arch}.embedding_length")
    heads, heads_kv = f.get(f"{arch}.attention.head_count"), f.get(f"{arch}.attention.head_count_kv")
    tokens = f.get("tokenizer.ggml.tokens")
    kv_dim = (
        d_model // heads * (heads_kv or heads)
        if isinstance(d_model, int) and isinstance(heads, int) and heads
        else None
    )
    return {
        "architecture": arch,
        "n_layer": n_layer if isinstance(n_layer, int) else None,
        "d_model": d_model if isinstance(d_model, int) else None,
        "kv_dim": kv_dim,
        "n_vocab": tokens["array_len"] if isinstance(tokens, dict) else None,
        "synth_spec": f.get("perfgate.synth_spec"),
    }


if __name__ == "__main__":
    try:
        sys.stdout.write(json.dumps(facts(sys.argv[1])))
    except (OSError, HeaderError, struct.error) as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}))
