"""onnxruntime-style scripts (tests/dropin/) run unchanged on lstminfer, with onnxruntime's results.

Each script runs twice in this process: as written (``import onnxruntime as ort``), and with
``onnxruntime`` replaced by ``lstminfer`` in its import lines and nowhere else. Both runs save their
results to an .npz; every array must match (float32 within 1e-5, everything else exactly).
"""
from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import lstminfer.models

pytest.importorskip("onnxruntime")

SCRIPTS = sorted(p for p in (Path(__file__).parent / "dropin").glob("*.py"))
_IMPORT = re.compile(r"^(import|from) onnxruntime\b", re.MULTILINE)


def as_lstminfer(source: str) -> str:
    """The script with ``onnxruntime`` swapped for ``lstminfer`` in its import lines only."""
    swapped = _IMPORT.sub(r"\1 lstminfer", source)
    assert "import onnxruntime" not in swapped and "from onnxruntime" not in swapped
    return swapped


def run_script(path: Path, out: Path, monkeypatch) -> dict[str, np.ndarray]:
    monkeypatch.setattr(sys, "argv", [str(path), lstminfer.models.path("adding_lstm"), str(out)])
    runpy.run_path(str(path), run_name="__main__")
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}


def test_every_script_imports_onnxruntime_and_nothing_of_lstminfer():
    assert len(SCRIPTS) >= 8
    for path in SCRIPTS:
        source = path.read_text()
        assert _IMPORT.search(source), path.name
        assert "lstminfer" not in source, path.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_gives_onnxruntime_results_on_lstminfer(script, tmp_path, monkeypatch):
    expected = run_script(script, tmp_path / "onnxruntime.npz", monkeypatch)
    swapped = tmp_path / script.name
    swapped.write_text(as_lstminfer(script.read_text()))
    monkeypatch.chdir(tmp_path)
    got = run_script(swapped, tmp_path / "lstminfer.npz", monkeypatch)
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        have = got[name]
        assert have.shape == want.shape, (script.stem, name, have, want)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5, err_msg=f"{script.stem}: {name}")
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"{script.stem}: {name}")
