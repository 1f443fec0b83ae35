"""Helpful refusals and the onnxruntime fallback, on a real PyTorch export with an op lstminfer lacks.

The model (``torch_models.UpsampledSpec``) is an LSTM whose output is upsampled over features
(``F.interpolate``: ONNX ``Resize``, which lstminfer does not run) then a Linear head; exported by
both PyTorch exporters.
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch export tests need torch")
ort = pytest.importorskip("onnxruntime", reason="the fallback and the checks need onnxruntime")

import lstminfer  # noqa: E402
from lstminfer.cli import main  # noqa: E402
from lstminfer.ops.registry import supported_ops  # noqa: E402
import torch_models as zoo  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module", params=[("torchscript", 17, False), ("dynamo", 18, True)], ids=["torchscript", "dynamo"])
def upsampled(request, tmp_path_factory):
    """(path, onnxruntime session) of the model with a Resize node, exported once per module."""
    exporter, opset, dynamic_time = request.param
    path = tmp_path_factory.mktemp("refusals") / f"upsampled-{exporter}.onnx"
    path.write_bytes(zoo.export(zoo.UpsampledSpec(), exporter, opset, 2, 4, dynamic_time))
    return str(path), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_readme_lists_exactly_the_supported_ops():
    text = README.read_text()
    block = re.search(r"<!-- supported-ops:start -->(.*)<!-- supported-ops:end -->", text, re.S)
    assert block, "README.md lost its 'Supported ops' list"
    # A fresh process: other tests register test-only ops in this one's registry.
    fresh = subprocess.run([sys.executable, "-c", "from lstminfer.ops.registry import supported_ops; "
                            "print(' '.join(supported_ops()))"], capture_output=True, text=True, check=True,
                           cwd=README.parent).stdout.split()
    assert fresh and set(fresh) <= set(supported_ops())
    assert re.findall(r"`([^`]+)`", block.group(1)) == fresh, \
        "README.md 'Supported ops' differs from lstminfer.ops.registry.supported_ops(): update the list"


def test_unsupported_op_is_one_line_naming_node_op_domain_opset_and_the_docs(upsampled):
    path, _ = upsampled
    with pytest.raises(lstminfer.UnsupportedModelError) as caught:
        lstminfer.load(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500, message
    assert re.search(r"node '[^']+' \(Resize\), domain 'ai.onnx', opset \d+: op type 'Resize'", message)
    assert "'Supported ops' section of README.md" in message and "fallback='onnxruntime'" in message
    assert "Softplus" not in message, "the list of supported ops belongs in the docs, not the message"


def test_info_shows_a_model_it_cannot_run_with_the_node_flagged(upsampled, capsys):
    path, _ = upsampled
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert re.search(r"UNSUPPORTED node '[^']*' \(Resize\)", out), out
    for line in ("inputs:", "x: float32", "outputs:", "LSTM x1", "recurrent layers: 1", "runs: no", "streamable: no"):
        assert line in out, f"{line!r} missing from:\n{out}"
    streamable = next(line for line in out.splitlines() if line.startswith("streamable:"))
    assert re.search(r"\(Resize\) prevents streaming: op Resize is not known to act on each time step", streamable)


def test_quantize_refuses_a_model_lstminfer_cannot_run(upsampled, tmp_path):
    path, _ = upsampled
    target = tmp_path / "q.onnx"
    with pytest.raises(lstminfer.UnsupportedModelError, match=r"cannot run this model.*op type 'Resize'"):
        lstminfer.quantize(path, target)
    assert not target.exists()


def test_fallback_runs_the_unsupported_node_through_onnxruntime(upsampled, rng):
    path, ort_sess = upsampled
    model = lstminfer.load(path, fallback="onnxruntime")
    for batch, time in ((1, 1), (3, 9)):
        x = rng.standard_normal((batch, time, 5), dtype=np.float32)
        got, want = model.run(None, {"x": x})[0], ort_sess.run(None, {"x": x})[0]
        assert got.shape == want.shape and float(np.max(np.abs(got - want))) <= 1e-5
    text = model.describe()
    assert re.search(r"fallback=onnxruntime: 1 node\(s\) run by onnxruntime: node '[^']*' \(Resize\)", text)
    assert re.search(r"Resize -> .*via onnxruntime \(fallback\)", text)
    assert "LSTM" in text and "via onnxruntime (fallback)" not in [l for l in text.splitlines() if "LSTM ->" in l][0]
    with pytest.raises(lstminfer.NotStreamableError, match=r"\(Resize\) prevents streaming"):
        model.stream()


def test_fallback_is_off_by_default_and_checked(upsampled, monkeypatch):
    path, _ = upsampled
    with pytest.raises(lstminfer.InvalidArgumentError, match=r"fallback must be None or one of \['onnxruntime'\]"):
        lstminfer.load(path, fallback="tensorflow")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(lstminfer.UnsupportedModelError, match=r"needs the onnxruntime package.*Resize"):
        lstminfer.load(path, fallback="onnxruntime")


def test_fallback_on_a_model_lstminfer_runs_changes_nothing(rng):
    model = lstminfer.load(str(Path(lstminfer.models.path("adding_lstm"))), fallback="onnxruntime")
    assert model.fallback_nodes == []
    assert "via onnxruntime" not in model.describe()
