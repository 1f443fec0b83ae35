"""The three fuzz targets: each takes the fuzzer's bytes and raises ``Finding`` (or lets any
undocumented exception escape) when lstminfer misbehaves.

* ``load``: the bytes as a serialized model (the corpus: valid models, mutated);
* ``feeds``: the bytes pick a valid model and build a hostile feed (dtype, byte order, shape,
  zero and huge dims, NaN/inf, strides) for ``run``, ``Stream.step`` or ``StreamPool.step``;
  a result must equal the reference backend's on the same values in native order and layout;
* ``state``: the bytes as a saved stream state for ``Model.stream``, ``StreamPool.open`` and
  ``set_state``; a refused blob must leave the stream and the pool's other stream unchanged.

Allowed outcomes: a result, or an exception of lstminfer.errors (``LstminferError``). Anything
else (another exception, a native crash, a hang past libFuzzer's -timeout) is a finding.
tools/fuzz/run.py drives them with atheris; tests/test_fuzz.py runs each for a few seconds.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import lstminfer
from lstminfer.errors import LstminferError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
MODELS = Path(lstminfer.__file__).parent / "models"
ATOL, RTOL = 1e-5, 1e-4


class Finding(AssertionError):
    """lstminfer did something no documented outcome allows."""


def small_models() -> dict[str, bytes]:
    """name -> serialized model: the bundled ones and one small LSTM, GRU and RNN (seed corpus)."""
    from onnx import TensorProto, helper, numpy_helper

    models = {p.stem: p.read_bytes() for p in sorted(MODELS.glob("*.onnx"))}
    rng = np.random.default_rng(0)
    H, I = 3, 2
    for op, G in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
        inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                 for n, s in (("W", (1, G * H, I)), ("R", (1, G * H, H)), ("B", (1, 2 * G * H)))]
        node = helper.make_node(op, ["X", "W", "R", "B"], outputs, name=op.lower(), hidden_size=H)
        graph = helper.make_graph(
            [node], op.lower(), [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        models[f"small_{op.lower()}"] = model.SerializeToString()
    return models


# --------------------------------------------------------------------- load --

def load(data: bytes) -> None:
    try:
        model = lstminfer.load(data)
    except LstminferError:
        return
    model.describe()  # what a loaded model reports must not fail either
    from lstminfer.sample_inputs import sample_feeds

    try:  # and it runs, or says why not
        model.run(None, sample_feeds(model, time=3, batch=1))
    except LstminferError:
        pass


# -------------------------------------------------------------------- feeds --

_DTYPES = [np.dtype(t) for t in ("<f4", ">f4", "<f8", ">f8", "<f2", "<i4", ">i4", "<i8", "u1", "?", "<c8", "O")]
_SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45], np.float64)
_MAX_ELEMENTS = 4096  # feeds stay small; huge dims come with a zero dim beside them


class _Feeds:
    """The models the ``feeds`` target runs, each under the fast backend and the reference."""

    def __init__(self) -> None:
        blobs = small_models()
        self.names = sorted(blobs)
        self.fast = {n: lstminfer.load(blobs[n]) for n in self.names}
        self.ref = {n: lstminfer.load(blobs[n], backend="reference") for n in self.names}


_feeds: _Feeds | None = None


def _hostile_array(fdp, rank_hint: int) -> tuple[np.ndarray, np.ndarray]:
    """(the hostile array, the same values native-endian and C-contiguous)."""
    dtype = _DTYPES[fdp.ConsumeIntInRange(0, len(_DTYPES) - 1)]
    rank = rank_hint if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 4)
    shape = [fdp.ConsumeIntInRange(0, 5) for _ in range(rank)]
    if rank and fdp.ConsumeIntInRange(0, 15) == 0:  # a huge dim, made harmless by a zero beside it
        shape[fdp.ConsumeIntInRange(0, rank - 1)] = 10**9
        shape[fdp.ConsumeIntInRange(0, rank - 1)] = 0
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n > _MAX_ELEMENTS:
        shape, n = [1] * rank, 1
    values = np.array(fdp.ConsumeFloatListInRange(n, -4.0, 4.0) + [0.0] * n)[:n]
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        if n:
            values[fdp.ConsumeIntInRange(0, n - 1)] = _SPECIALS[fdp.ConsumeIntInRange(0, len(_SPECIALS) - 1)]
    with np.errstate(all="ignore"):
        native = values.reshape(shape).astype(dtype.newbyteorder("=") if dtype.kind != "O" else dtype)
    hostile = native.astype(dtype)
    layout = fdp.ConsumeIntInRange(0, 3)
    if layout == 1 and hostile.ndim >= 2:  # Fortran order
        hostile = np.asfortranarray(hostile)
    elif layout == 2 and hostile.ndim >= 1:  # every other element of a twice-as-long array
        doubled = np.zeros((2 * hostile.shape[0],) + hostile.shape[1:], hostile.dtype)  # (np.repeat loops
        doubled[::2] = hostile                                                             # over empty rows)
        hostile = doubled[::2]
    elif layout == 3:  # read-only
        hostile = hostile.copy()
        hostile.setflags(write=False)
    return hostile, np.ascontiguousarray(native)


def _at_float32_edge(x: np.ndarray) -> bool:
    """Whether ``x`` holds inf, NaN or a value within a few orders of float32's largest. Then a sum's
    result depends on its order: a product past 3.4e38 overflows to inf in a partial sum kept apart
    for speed (every BLAS keeps several), and inf - inf is NaN where one running sum stays finite
    (1e38 * 9.1 + inf). Such entries are not compared, the finite ones still are."""
    if x.dtype.kind not in "fc":
        return False
    with np.errstate(all="ignore"):
        values = np.abs(x.astype(np.complex128 if x.dtype.kind == "c" else np.float64))
    return bool((~np.isfinite(values)).any() or (values >= 1e30).any())


def _same(got, want, what: str, edge: bool = False) -> None:
    """``got`` equals ``want`` within ATOL/RTOL (``edge``: the input was at float32's edge, see
    ``_at_float32_edge``: entries non-finite on either side are not compared)."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            raise Finding(f"{what}: outputs {type(got)} differ from the reference's")
        for k in want:
            _same(got[k], want[k], f"{what}[{k}]", edge)
        return
    if isinstance(want, (list, tuple)):
        if len(got) != len(want):
            raise Finding(f"{what}: {len(got)} outputs, the reference {len(want)}")
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{what}[{i}]", edge)
        return
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Finding(f"{what}: {got.dtype}{got.shape}, the reference {want.dtype}{want.shape}")
    if edge and got.dtype.kind in "fc":
        both = np.isfinite(got) & np.isfinite(want)
        got, want = got[both], want[both]
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
        nan_here = np.isnan(got) != np.isnan(want)
        if nan_here.any():
            raise Finding(f"{what}: NaN at {int(nan_here.sum())} entries where the other side has none")
        raise Finding(f"{what}: max abs diff {np.nanmax(np.abs(got - want))} from the reference")


def _outcome(call):
    try:
        return "ok", call()
    except LstminferError as e:
        return "error", e


def feeds(data: bytes) -> None:
    global _feeds
    import atheris

    if _feeds is None:
        _feeds = _Feeds()
    fdp = atheris.FuzzedDataProvider(data)
    name = _feeds.names[fdp.ConsumeIntInRange(0, len(_feeds.names) - 1)]
    fast, ref = _feeds.fast[name], _feeds.ref[name]
    x, native = _hostile_array(fdp, rank_hint=3)
    data_input = fast.get_inputs()[0].name
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        what = f"{name}.run({x.dtype}{x.shape})"
        got = _outcome(lambda: fast.run(None, {data_input: x}))
        want = _outcome(lambda: ref.run(None, {data_input: native}))
    elif mode == 1:
        what = f"{name}.stream().step({x.dtype}{x.shape})"
        got = _outcome(lambda: _stream_step(fast, x))
        want = _outcome(lambda: _stream_step(ref, native))
    else:
        what = f"{name}.stream_pool().step({x.dtype}{x.shape})"
        got = _outcome(lambda: _pool_step(fast, x))
        want = _outcome(lambda: _pool_step(ref, native))
    if got[0] != want[0]:
        raise Finding(f"{what}: lstminfer {got[0]} ({got[1]!r:.300}), the reference {want[0]} ({want[1]!r:.300})")
    if got[0] == "ok":
        _same(got[1], want[1], what, _at_float32_edge(native))


def _stream_step(model, x):
    s = model.stream()
    return s.step(x), s.state


def _pool_step(model, x):
    pool = model.stream_pool(max_streams=2)
    a, b = pool.open(), pool.open()
    out = pool.step({a: x})[a]
    return out, pool.state(a), pool.state(b)


# -------------------------------------------------------------------- state --

class _States:
    def __init__(self) -> None:
        blobs = small_models()
        self.model = lstminfer.load(blobs["forecast_lstm"])
        chunk = np.linspace(-1, 1, 3, dtype=np.float32).reshape(1, 3, 1)
        stream = self.model.stream()
        stream.step(chunk)
        self.stepped = stream.state


_states: _States | None = None


def state_blobs() -> dict[str, bytes]:
    """Seed blobs: states of the bundled models, fresh and after a step."""
    out = {}
    for p in sorted(MODELS.glob("*.onnx")):
        m = lstminfer.load(p)
        s = m.stream()
        out[f"{p.stem}_zero"] = s.save()
        features = m.get_inputs()[0].shape[2]
        s.step(np.linspace(-1, 1, 3 * features, dtype=np.float32).reshape(1, 3, features))
        out[f"{p.stem}_stepped"] = s.save()
    return out


def _resealed(data: bytes) -> bytes:
    """``data`` with a valid CRC-32 in its fixed header: a crafted blob, so the mutations reach
    the header and entry checks behind the checksum."""
    import struct
    import zlib

    if len(data) < 28:
        return data
    return data[:24] + struct.pack("<I", zlib.crc32(data[28:])) + data[28:]


def state(data: bytes) -> None:
    global _states
    if _states is None:
        _states = _States()
    if data[-1:] and data[-1] & 1:  # half the inputs: crafted, past the checksum
        data = _resealed(data)
    model = _states.model
    try:
        restored = model.stream(state=data)
    except LstminferError:
        restored = None
    if restored is not None:
        again = model.stream(state=restored.save()).state  # an accepted blob round-trips
        for key, value in restored.state.items():
            if not np.array_equal(again[key], value, equal_nan=True):
                raise Finding(f"state '{key}' does not round-trip through save()")
    stream = model.stream(state=_states.stepped)
    if not _accepted(lambda: stream.set_state(data)):
        _unchanged(stream.state, _states.stepped, "the stream")
    pool = model.stream_pool(max_streams=3)
    a, b = pool.open(state=_states.stepped), pool.open(state=_states.stepped)
    opened = _accepted(lambda: pool.open(state=data))
    if not _accepted(lambda: pool.set_state(b, data)):
        _unchanged(pool.state(b), _states.stepped, "the pool stream offered the blob")
    _unchanged(pool.state(a), _states.stepped, "the pool's other stream")
    if len(pool) != 2 + opened:
        raise Finding(f"the pool has {len(pool)} open streams after open() {'accepted' if opened else 'refused'} a blob")


def _accepted(call) -> bool:
    try:
        call()
        return True
    except LstminferError:
        return False


def _unchanged(now, before, what: str) -> None:
    for key, value in before.items():
        if not np.array_equal(now[key], value):
            raise Finding(f"{what}'s state '{key}' changed after a refused blob")


TARGETS = {"load": load, "feeds": feeds, "state": state}
