"""The native layer's contracts: its C headers alone, the numbers it shares with Python, and the
size checks of every def entry point of the recurrent kernels (wrong sizes raise, never crash)."""
import importlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lstminfer.kernels import cython_backend, packing
from lstminfer import reference

ROOT = Path(__file__).resolve().parent.parent
# Each build of the recurrent kernels and the CPU features it needs.
# (a build of another architecture needs features this one's _cpu never reports: never runnable)
BUILDS = {"_rnn_kernels": (), "_rnn_kernels_avx2": ("avx2", "fma"), "_rnn_kernels_avx512": ("avx512f", "avx2", "fma"),
          "_rnn_kernels_armv82": ("asimd", "fp16", "dotprod"),
          "_rnn_kernels_armv86": ("asimd", "fp16", "dotprod", "i8mm")}
ISA_FLAGS = {"_rnn_kernels": [], "_rnn_kernels_avx2": ["-mavx2", "-mfma"],
             "_rnn_kernels_avx512": ["-mavx512f", "-mavx2", "-mfma"],
             "_rnn_kernels_armv82": ["-march=armv8.2-a+fp16+dotprod"],
             "_rnn_kernels_armv86": ["-march=armv8.2-a+fp16+dotprod+i8mm"]}
ISA_NAMES = {"_rnn_kernels": "portable", "_rnn_kernels_avx2": "avx2", "_rnn_kernels_avx512": "avx512",
             "_rnn_kernels_armv82": "armv82", "_rnn_kernels_armv86": "armv86"}


def _cpu_has(needs):
    try:
        from lstminfer._native._cpu import features
    except ImportError:
        return not needs
    have = features()
    return all(have.get(f) for f in needs)


RUNNABLE = [name for name, needs in BUILDS.items() if _cpu_has(needs)]


def _module(name):
    try:
        return importlib.import_module(f"lstminfer._native.{name}")
    except ImportError:
        pytest.skip(f"lstminfer._native.{name} is not built")


@pytest.fixture(params=RUNNABLE)
def ext(request):
    return _module(request.param)


# ------------------------------------------------------------------ C alone --

@pytest.mark.parametrize("build", RUNNABLE)
def test_headers_compile_and_pass_alone(build, tmp_path):
    """native/li_*.h without Python: exp/tanh/sigmoid against libm, the micro-kernels against a
    naive product, the fused LSTM cells against the scalar maths, for each instruction set."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "test_li_headers"
    built = subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wno-unused-function", f"-I{ROOT / 'native'}",
                            *ISA_FLAGS[build], str(ROOT / "tests" / "c" / "test_li_headers.c"), "-o", str(exe),
                            "-lm", "-lpthread"], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith(ISA_NAMES[build] + " ok"), ran.stdout


# The builds whose dynamic int8 products (li_vnni.h) this CPU runs, and the features they need.
INT8_DOT = {"_rnn_kernels_avx512": ("avx512f", "avx512bw", "avx512vl", "avx512vnni"),
            "_rnn_kernels_armv82": ("dotprod",), "_rnn_kernels_armv86": ("dotprod", "i8mm")}


@pytest.mark.parametrize("build", [b for b, needs in INT8_DOT.items() if b in RUNNABLE and _cpu_has(needs)])
def test_int8_dot_products_equal_naive_ones(build, tmp_path):
    """li_vnni_gemm (VNNI on x86-64, sdot or i8mm smmla on aarch64) against a naive int8 product, in C."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "test_li_vnni"
    built = subprocess.run([cc, "-O2", "-std=gnu11", f"-I{ROOT / 'native'}", *ISA_FLAGS[build],
                            str(ROOT / "tests" / "c" / "test_li_vnni.c"), "-o", str(exe), "-lm"],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "compiled=1 fails=0" in ran.stdout, ran.stdout + ran.stderr
    if ISA_NAMES[build] == "armv86":  # the i8mm build runs smmla, not sdot
        assert "product=smmla" in ran.stdout, ran.stdout


@pytest.mark.parametrize("features, build", [
    ({"asimd": True, "fp16": True, "dotprod": True, "i8mm": True}, "armv86"),
    ({"asimd": True, "fp16": True, "dotprod": True, "i8mm": False}, "armv82"),  # sdot, no smmla
    ({"asimd": True, "fp16": True, "dotprod": False, "i8mm": True}, "portable"),
])
def test_aarch64_build_follows_dotprod_and_i8mm(features, build, monkeypatch):
    """isa() takes the smmla build only where the CPU reports i8mm (HWCAP2), else sdot's, else NEON's."""
    _cpu = pytest.importorskip("lstminfer._native._cpu")
    monkeypatch.delenv(cython_backend.PORTABLE_ENV, raising=False)
    monkeypatch.setattr(_cpu, "features", lambda: dict(features))
    assert cython_backend.isa() == build


# ---------------------------------------------------- numbers shared with Python --

def test_segments_match_packing(ext):
    assert {"SEG_BIAS_X", "SEG_BIAS_RH", "SEG_PEEP", "NUM_SEGMENTS", "ALIGN_FLOATS"} <= set(ext.PACKING)
    for name, value in ext.PACKING.items():
        assert getattr(packing, name) == value, name


def test_shared_constants_match_python(ext):
    numba_math = pytest.importorskip("lstminfer.kernels.numba_math", reason="numba is an extra (lstminfer[numba])")
    assert ext.ACTIVATION_CODES == numba_math.ACTIVATION_CODES
    assert ext.GATES == packing.GATES
    assert ext.GATES == reference.GATES
    assert ext.ACTS_PER_DIRECTION == {op: len(names) for op, names in reference.DEFAULT_ACTIVATIONS.items()}
    assert set(ext.OPS) == set(cython_backend.OPS)


def test_every_build_shares_the_numbers():
    builds = [_module(name) for name in BUILDS if importlib.util.find_spec(f"lstminfer._native.{name}")]
    for name in ("ACTIVATION_CODES", "OPS", "GATES", "ACTS_PER_DIRECTION", "QKINDS", "PACKING"):
        assert all(getattr(b, name) == getattr(builds[0], name) for b in builds), name


def test_each_build_names_its_instruction_set():
    for name in BUILDS:
        if importlib.util.find_spec(f"lstminfer._native.{name}"):
            assert _module(name).ISA == ISA_NAMES[name]


# ------------------------------------------------------------- size checks --

T, B, I, H = 3, 2, 3, 5


def _sequence_args(ext):
    """A valid LSTM call (zero weights, one direction) of ``ext.sequence``, as a dict."""
    codes = [ext.ACTIVATION_CODES[a] for a in ("sigmoid", "tanh", "tanh")]
    return dict(
        op=ext.OPS["LSTM"], X=np.ones((T, B, I), np.float32), lens=np.full(B, T, np.int32), has_lens=True,
        h0=np.zeros((1, B, H), np.float32), has_h0=True, c0=np.zeros((1, B, H), np.float32), has_c0=True,
        Y=np.empty((T, 1, B, H), np.float32), states=np.empty((2, 1, B, H), np.float32),
        wbuf=np.zeros(1024, np.float32), offsets=np.zeros((1, ext.PACKING["NUM_SEGMENTS"]), np.int64),
        pbuf=np.zeros(4096, np.float32), poff=np.zeros((1, 3), np.int64), codes=np.asarray(codes, np.int32),
        fparams=np.zeros(6, np.float32), scratch=np.zeros(ext.scratch_floats(T, B, 4, H), np.float32),
        reverse_first=False, flag=False, time_major=True, clip=np.inf,
    )


def _call(ext, args):
    a = args
    return ext.sequence(a["op"], a["X"], a["lens"], a["has_lens"], a["h0"], a["has_h0"], a["c0"], a["has_c0"],
                        a["Y"], a["states"], a["wbuf"], a["offsets"], a["pbuf"], a["poff"], a["codes"], a["fparams"],
                        a["scratch"], a["reverse_first"], a["flag"], a["time_major"], a["clip"])


def test_sequence_runs_with_right_sizes(ext):
    args = _sequence_args(ext)
    assert _call(ext, args) == 0
    np.testing.assert_array_equal(args["Y"], 0)  # zero weights and state: h stays 0


WRONG_SIZES = {
    "Y shape": lambda a: a.update(Y=np.empty((T - 1, 1, B, H), np.float32)),
    "states shape": lambda a: a.update(states=np.empty((1, 1, B, H), np.float32)),
    "lens length": lambda a: a.update(lens=np.full(B - 1, T, np.int32)),
    "h0 shape": lambda a: a.update(h0=np.zeros((1, B, H - 1), np.float32)),
    "c0 shape": lambda a: a.update(c0=np.zeros((1, B - 1, H), np.float32)),
    "scratch length": lambda a: a.update(scratch=np.zeros(8, np.float32)),
    "offsets shape": lambda a: a.update(offsets=np.zeros((1, 3), np.int64)),
    "poff shape": lambda a: a.update(poff=np.zeros((2, 3), np.int64)),
    "codes length": lambda a: a.update(codes=a["codes"][:2].copy()),
    "fparams length": lambda a: a.update(fparams=np.zeros(2, np.float32)),
    "wbuf segment": lambda a: a.update(wbuf=np.zeros(8, np.float32)),
    "panels 0": lambda a: a.update(pbuf=np.zeros(8, np.float32)),
    "panels 1": lambda a: a.update(poff=np.array([[0, 4000, 0]], np.int64)),
    "wbuf segment 2": lambda a: a["offsets"].__setitem__((0, packing.SEG_BIAS_X), -1),
    "op": lambda a: a.update(op=7),
}


@pytest.mark.parametrize("what", sorted(WRONG_SIZES))
def test_sequence_rejects_wrong_sizes(ext, what):
    args = _sequence_args(ext)
    WRONG_SIZES[what](args)
    with pytest.raises(ValueError, match=what.split(" 2")[0]):
        _call(ext, args)


def _bind_args(ext):
    a = _sequence_args(ext)
    return dict(run_sequence_capsule=ext.RUN_SEQUENCE, op=a["op"], W=None, R=None, B=None, P=None, check_p=True,
                wbuf=a["wbuf"], offsets=a["offsets"], pbuf=a["pbuf"], poff=a["poff"], codes=a["codes"],
                fparams=a["fparams"], hidden_size=H, input_size=I, num_directions=1, gates=4, outputs=3,
                reverse_first=False, flag=False, time_major=True, clip=np.inf, split_rows=0)


def test_bind_core_checks_the_constants(ext):
    core = _module("_rnn_kernels").KernelCore()
    core._bind_core(**_bind_args(ext))  # right sizes: binds
    for change, what in ((dict(gates=3), "gates"), (dict(num_directions=2), "offsets shape"),
                         (dict(pbuf=np.zeros(8, np.float32)), "panels 0"),
                         (dict(codes=np.zeros(1, np.int32)), "codes length"),
                         (dict(panel_width=ext.PANEL_WIDTH + 1), "panel_width"),
                         (dict(threads=0, split_rows=4), "threads"),
                         (dict(qpbuf=np.zeros(8, np.int8)), "come together"),
                         (dict(qpbuf=np.zeros(8, np.int8), qscale=np.zeros(64, np.float32),
                               qsoff=np.zeros((1, 3), np.int64), qkind=ext.QKINDS["int8"]), "panels 0")):
        with pytest.raises(ValueError, match=what):
            _module("_rnn_kernels").KernelCore()._bind_core(**{**_bind_args(ext), **change})
