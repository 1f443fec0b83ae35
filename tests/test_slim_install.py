"""The slim install: numba is an extra. Without it the default backend still runs, and asking for
the JIT backend fails naming the extra (here numba is hidden from a subprocess: sys.modules['numba']
= None makes every import of it fail, as on an install without the extra)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WITHOUT_NUMBA = """
import sys
sys.modules["numba"] = None  # import numba -> ImportError
import importlib.util
importlib.util.find_spec = (lambda f: lambda name, *a: None if name == "numba" else f(name, *a))(importlib.util.find_spec)
import numpy as np
import lstminfer, lstminfer.models
from lstminfer.errors import BackendUnavailableError
print("backends", lstminfer.available_backends())
m = lstminfer.load(lstminfer.models.path("adding_lstm"))
print("runs on", m.backend)
try:
    lstminfer.load(lstminfer.models.path("adding_lstm"), backend="numba")
except BackendUnavailableError as e:
    print("numba:", e)
from lstminfer.cli import main
try:
    print("compile exit", main(["compile", "--backend", "numba"]))
except SystemExit as e:
    print("compile exit", e.code)
"""


def test_without_numba_the_default_backend_runs_and_numba_names_its_extra():
    ran = subprocess.run([sys.executable, "-c", _WITHOUT_NUMBA], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout + ran.stderr
    assert "'numba'" not in out.splitlines()[0]  # not among the available backends
    assert "runs on cython" in out or "runs on reference" in out
    assert "numba: backend 'numba' is not available" in out and "lstminfer[numba]" in out
    assert "compile exit 2" in out and "lstminfer[numba]" in ran.stderr
