"""The bytes of a saved stream state (``Stream.save()``, ``StreamPool.save(sid)``): write and read.

Layout (format version 2), all little-endian::

    magic "LSTMINFER-STREAM" (16 bytes) | version u32 | header length u32 | CRC-32 of the rest u32
    header: JSON {"fingerprint": <model hash>, "entries": [{"key", "dtype", "shape", "offset", "nbytes"}]}
    payload: each state's C-order bytes at its offset

A blob is read strictly: the checksum catches truncation and flipped bits, the fingerprint
a blob of another model, and every entry must have exactly the dtype, shape and byte count
the model's state has. Every refusal is an ``InvalidInputError`` saying what is wrong;
nothing is returned (so nothing is written) unless the whole blob is right.
"""
from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Mapping

import numpy as np

from .errors import InvalidArgumentError, InvalidInputError

MAGIC = b"LSTMINFER-STREAM"
VERSION = 2
_FIXED = struct.Struct("<16sIII")  # magic, version, header length, crc32(header + payload)
_ENTRY_FIELDS = {"key": str, "dtype": str, "shape": list, "offset": int, "nbytes": int}


def encode(fingerprint: str, states: Mapping[str, np.ndarray]) -> bytes:
    """The blob of ``states`` (key -> array, in the model's slot order) for the model ``fingerprint``."""
    entries, payload, offset = [], [], 0
    for key, value in states.items():
        data = np.ascontiguousarray(value).tobytes()
        entries.append({"key": key, "dtype": value.dtype.str, "shape": list(value.shape),
                        "offset": offset, "nbytes": len(data)})
        payload.append(data)
        offset += len(data)
    body = json.dumps({"fingerprint": fingerprint, "entries": entries}).encode()
    rest = body + b"".join(payload)
    return _FIXED.pack(MAGIC, VERSION, len(body), zlib.crc32(rest)) + rest


def decode(blob: Any, fingerprint: str, shapes: Mapping[str, tuple[int, ...]],
           dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    """The states in ``blob``, checked against the model's (``shapes``/``dtypes`` by key); fresh arrays."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"a saved state is bytes from save(), got {type(blob).__name__}")
    blob = bytes(blob)
    if not blob or not (blob.startswith(MAGIC) or MAGIC.startswith(blob)):
        raise InvalidInputError("not a saved lstminfer stream state (bad magic bytes)")
    if len(blob) >= 20:  # magic + version: another format's blob says so before anything else
        version = struct.unpack_from("<I", blob, 16)[0]
        if version != VERSION:
            raise InvalidInputError(f"saved stream state has format version {version}; this lstminfer reads "
                                    f"version {VERSION} (save the state again with this release)")
    if len(blob) < _FIXED.size:
        raise InvalidInputError(f"saved stream state is truncated ({len(blob)} bytes, the fixed header alone "
                                f"is {_FIXED.size})")
    _, _, length, crc = _FIXED.unpack_from(blob)
    rest = blob[_FIXED.size:]
    if length > len(rest):
        raise InvalidInputError(f"saved stream state is truncated: its header needs {length} bytes, "
                                f"{len(rest)} follow")
    if zlib.crc32(rest) != crc:
        raise InvalidInputError("saved stream state is corrupt: its checksum does not match "
                                "(bytes changed or cut off after save())")
    header = _header(rest[:length])
    if header["fingerprint"] != fingerprint:
        raise InvalidInputError(
            f"saved stream state belongs to a different model (fingerprint {str(header['fingerprint'])[:12]}..., "
            f"this model {fingerprint[:12]}...)")
    return _states(header["entries"], rest[length:], shapes, dtypes)


def _header(raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"saved stream state has a corrupt header: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("fingerprint"), str) \
            or not isinstance(header.get("entries"), list):
        raise InvalidInputError("saved stream state has a corrupt header: expected "
                                "{'fingerprint': str, 'entries': [...]}")
    for entry in header["entries"]:
        fits = isinstance(entry, dict) and all(
            isinstance(entry.get(k), t) and not isinstance(entry.get(k), bool) for k, t in _ENTRY_FIELDS.items())
        if not fits or not all(isinstance(d, int) and not isinstance(d, bool) for d in entry["shape"]):
            raise InvalidInputError(f"saved stream state has a corrupt entry {str(entry)[:200]}: expected "
                                    "key, dtype, shape (ints), offset and nbytes")
    return header


def _states(entries: list, payload: bytes, shapes, dtypes) -> dict[str, np.ndarray]:
    keys = [e["key"] for e in entries]
    if sorted(keys) != sorted(shapes):
        raise InvalidInputError(f"saved stream state has entries {keys}, expected {sorted(shapes)}")
    states, end = {}, 0
    for entry in entries:
        key = entry["key"]
        want_shape, want_dtype = tuple(shapes[key]), np.dtype(dtypes[key])
        if entry["dtype"] != want_dtype.str:
            raise InvalidInputError(f"saved stream state '{key}' has dtype '{entry['dtype']}', "
                                    f"this model's is '{want_dtype.str}' ({want_dtype})")
        if tuple(entry["shape"]) != want_shape:
            raise InvalidInputError(f"saved stream state '{key}' has shape {tuple(entry['shape'])}, "
                                    f"this model's is {want_shape}")
        start, n = entry["offset"], entry["nbytes"]
        want_bytes = int(np.prod(want_shape, dtype=np.int64)) * want_dtype.itemsize
        if n != want_bytes or start < 0 or start + n > len(payload):
            raise InvalidInputError(f"saved stream state '{key}' claims bytes {start}..{start + n} of "
                                    f"{len(payload)}; it needs {want_bytes}")
        states[key] = np.frombuffer(payload, dtype=want_dtype, count=n // want_dtype.itemsize,
                                    offset=start).reshape(want_shape).copy()
        end = max(end, start + n)
    if end != len(payload):
        raise InvalidInputError(f"saved stream state has {len(payload) - end} unexplained bytes after its states")
    return states
