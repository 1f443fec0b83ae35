"""Saved stream states (lstminfer/state_blob.py): every damaged or foreign blob is a clear
``InvalidInputError``, and the stream or pool it was offered to is left exactly as it was."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import lstminfer
from lstminfer import state_blob
from lstminfer.errors import InvalidArgumentError, InvalidInputError

MODELS = Path(lstminfer.__file__).parent / "models"


@pytest.fixture(scope="module")
def model():
    return lstminfer.load(MODELS / "forecast_lstm.onnx")


def stepped(model, seed: int):
    s = model.stream()
    features = model.get_inputs()[0].shape[2]
    s.step(np.random.default_rng(seed).standard_normal((1, 3, features)).astype(np.float32))
    return s


def reseal(blob: bytes, edit) -> bytes:
    """``blob`` with its JSON header edited by ``edit`` and a valid checksum (a crafted blob)."""
    _, version, length, _ = struct.unpack_from("<16sIII", blob)
    header = json.loads(blob[28:28 + length])
    edit(header)
    body = json.dumps(header).encode()
    rest = body + blob[28 + length:]
    return struct.pack("<16sIII", state_blob.MAGIC, version, len(body), zlib.crc32(rest)) + rest


def damaged(model) -> dict[str, tuple[bytes, str]]:
    """name -> (a bad blob, what the error must say)."""
    blob = stepped(model, 1).save()
    other = stepped(lstminfer.load(MODELS / "adding_lstm.onnx"), 1).save()
    v1 = struct.pack("<16sII", state_blob.MAGIC, 1, 2) + b"{}"

    def entry(field, value):
        def edit(h):
            h["entries"][0][field] = value
        return edit

    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    return {
        "empty": (b"", "bad magic"),
        "not_a_state": (b"PK\x03\x04" + bytes(40), "bad magic"),
        "truncated_in_magic": (blob[:9], "truncated"),
        "truncated_in_header": (blob[:40], "truncated"),
        "truncated_payload": (blob[:-3], "checksum"),
        "bit_flipped": (bytes(flipped), "checksum"),
        "bit_flipped_version": (blob[:16] + bytes([blob[16] ^ 1]) + blob[17:], "format version 3"),
        "other_format_version": (v1, "format version 1"),
        "other_model": (other, "different model"),
        "wrong_dtype_same_size": (reseal(blob, entry("dtype", "<i4")), "dtype '<i4'"),
        "wrong_shape_same_size": (reseal(blob, entry("shape", [1, 32, 1])), r"shape \(1, 32, 1\)"),
        "negative_offset": (reseal(blob, entry("offset", -4)), "claims bytes -4"),
        "missing_entry": (reseal(blob, lambda h: h["entries"].pop()), "has entries"),
        "corrupt_json": (reseal(blob, lambda h: h.update(entries=[1, 2])), "corrupt entry"),
    }


def _cases(model):
    cases = damaged(model)
    blob = stepped(model, 1).save()
    _, version, length, _ = struct.unpack_from("<16sIII", blob)
    rest = blob[28:] + b"\0" * 8
    cases["trailing_bytes"] = (struct.pack("<16sIII", state_blob.MAGIC, version, length, zlib.crc32(rest)) + rest,
                               "unexplained bytes")
    return cases


CASE_NAMES = ["empty", "not_a_state", "truncated_in_magic", "truncated_in_header", "truncated_payload", "bit_flipped",
              "bit_flipped_version", "other_format_version", "other_model", "wrong_dtype_same_size",
              "wrong_shape_same_size", "negative_offset", "missing_entry", "corrupt_json", "trailing_bytes"]


def test_a_saved_state_round_trips_exactly(model):
    s = stepped(model, 2)
    for restored in (model.stream(state=s.save()), model.stream()):
        restored.set_state(s.save())
        for key, value in s.state.items():
            np.testing.assert_array_equal(restored.state[key], value)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_bad_blob_is_refused_and_the_stream_keeps_its_state(model, name):
    blob, says = _cases(model)[name]
    with pytest.raises(InvalidInputError, match=says):
        model.stream(state=blob)
    s = stepped(model, 3)
    before = s.state
    with pytest.raises(InvalidInputError, match=says):
        s.set_state(blob)
    for key, value in before.items():
        np.testing.assert_array_equal(s.state[key], value)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_bad_blob_changes_no_stream_of_a_pool(model, name):
    blob, says = _cases(model)[name]
    pool = model.stream_pool(max_streams=4)
    a, b = pool.open(state=stepped(model, 4).save()), pool.open(state=stepped(model, 5).save())
    before = {sid: pool.state(sid) for sid in (a, b)}
    with pytest.raises(InvalidInputError, match=says):
        pool.open(state=blob)
    with pytest.raises(InvalidInputError, match=says):
        pool.set_state(a, blob)
    assert len(pool) == 2
    for sid in (a, b):
        for key, value in before[sid].items():
            np.testing.assert_array_equal(pool.state(sid)[key], value)


def test_a_blob_must_be_bytes(model):
    with pytest.raises(InvalidArgumentError, match="bytes from save"):
        model.stream().set_state(["not", "bytes"])


def test_every_single_bit_flip_is_caught(model):
    blob = stepped(model, 6).save()
    for i in range(0, len(blob) * 8, 7):
        flipped = bytearray(blob)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(InvalidInputError):
            model.stream(state=bytes(flipped))
