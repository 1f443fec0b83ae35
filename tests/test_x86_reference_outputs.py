"""The bundled models give x86-64's outputs on this platform (tests/data/x86_reference_outputs.npz,
written by tools/make_x86_reference.py): what tools/aarch64_check.sh relies on where onnxruntime
cannot run. On x86-64 it also catches a change of outputs the fixture was not regenerated for."""
from __future__ import annotations

import os

import numpy as np
import pytest

import lstminfer
import lstminfer.models

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "x86_reference_outputs.npz")
CASES = {"cython": dict(backend="cython"), "reference": dict(backend="reference"),
         "int8": dict(backend="cython", quantize="int8"), "bf16": dict(backend="cython", quantize="bf16")}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # float32 rounding: other vector widths, FMA or not


@pytest.fixture(scope="module")
def saved():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", lstminfer.models.available())
def test_outputs_equal_x86(saved, name, case, monkeypatch):
    monkeypatch.setenv("LSTMINFER_INT8_SCHEME", "weight-only")  # as the fixture was made
    feeds = {key.rsplit("/", 1)[1]: value for key, value in saved.items() if key.startswith(f"{name}/feed/")}
    assert feeds, f"{name}: no saved inputs in {FIXTURE} (regenerate it with tools/make_x86_reference.py)"
    model = lstminfer.load(lstminfer.models.path(name), **CASES[case])
    outputs = model.run(None, feeds)
    for out, value in zip(model.get_outputs(), outputs):
        np.testing.assert_allclose(value, saved[f"{name}/{case}/{out.name}"], **TOLERANCE,
                                   err_msg=f"{name} ({case}) output {out.name} differs from x86-64's")
