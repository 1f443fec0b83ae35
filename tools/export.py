"""Export a trained SequenceModel to ONNX (opset 17) and prove the export right.

``export_checked`` is the only entry point the training tool uses: it exports
with dynamic batch and time axes and explicit state inputs/outputs, then runs
PyTorch and onnxruntime on fresh inputs of another batch size and length
(random non-zero initial states included) and raises ``ExportCheckError``
unless every output agrees within ``tolerance``. Nothing is written before
that check passes.
"""
from __future__ import annotations

import copy
import io
import json
import warnings

import numpy as np
import onnx
import torch

from nets import SequenceModel, state_names

OPSET = 17
TOLERANCE = 1e-5


class ExportCheckError(RuntimeError):
    """The exported ONNX model does not compute what the PyTorch model computes."""


def export_onnx(model: SequenceModel, input_size: int, metadata: dict[str, str] | None = None) -> bytes:
    """ONNX bytes of ``model`` (a CPU copy of it, in eval mode); ``metadata`` goes to metadata_props."""
    model = copy.deepcopy(model).cpu().eval()
    h_in, h_out = state_names(model.cell)
    batch, steps = 2, 5  # export-time sizes; the check runs other ones
    x = torch.zeros(batch, steps, input_size)
    states = model.initial_state(batch)
    dynamic = {"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}}
    dynamic.update({name: {1: "batch"} for name in h_in + h_out})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but is the one that emits ONNX LSTM/GRU/RNN ops.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x, *states), buffer, opset_version=OPSET, dynamo=False,
            input_names=["x", *h_in], output_names=["y", *h_out], dynamic_axes=dynamic,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def fresh_inputs(model: SequenceModel, input_size: int, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs and random non-zero states (zeros would hide state-wiring bugs)."""
    rng = np.random.default_rng(seed)
    h_in, _ = state_names(model.cell)
    feeds = {"x": rng.standard_normal((batch, steps, input_size)).astype(np.float32)}
    for name in h_in:
        feeds[name] = (0.5 * rng.standard_normal((model.num_layers, batch, model.hidden_size))).astype(np.float32)
    return feeds


def check_export(onnx_bytes: bytes, model: SequenceModel, input_size: int, *, tolerance: float = TOLERANCE,
                 seed: int = 1234) -> float:
    """Max abs difference PyTorch vs onnxruntime over all outputs; raises ExportCheckError past ``tolerance``."""
    import onnxruntime as ort

    model = copy.deepcopy(model).cpu().eval()
    _, h_out = state_names(model.cell)
    worst = 0.0
    for batch, steps in ((3, 17), (1, 1)):  # neither is the export-time (2, 5): dynamic axes are exercised
        feeds = fresh_inputs(model, input_size, batch, steps, seed + batch)
        with torch.no_grad():
            expected = [t.numpy() for t in model(*(torch.from_numpy(v) for v in feeds.values()))]
        try:
            session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            got = session.run(["y", *h_out], feeds)
        except Exception as e:  # onnxruntime raises its own types; any failure is a failed check
            raise ExportCheckError(
                f"export check failed: onnxruntime cannot run the exported model on batch={batch}, "
                f"time={steps}: {type(e).__name__}: {e}"
            ) from e
        for name, want, have in zip(["y", *h_out], expected, got):
            if want.shape != have.shape:
                raise ExportCheckError(
                    f"export check failed: output '{name}' has shape {have.shape} in onnxruntime, "
                    f"{want.shape} in PyTorch (batch={batch}, time={steps})"
                )
            diff = float(np.max(np.abs(want - have))) if want.size else 0.0
            if not diff <= tolerance:  # also catches NaN
                raise ExportCheckError(
                    f"export check failed: output '{name}' differs between PyTorch and onnxruntime by "
                    f"{diff:.3g} (tolerance {tolerance:g}, batch={batch}, time={steps})"
                )
            worst = max(worst, diff)
    return worst


def export_checked(model: SequenceModel, input_size: int, metadata: dict[str, str] | None = None) -> tuple[bytes, float]:
    """Export and check; returns the ONNX bytes and the max abs difference found."""
    onnx_bytes = export_onnx(model, input_size, metadata)
    return onnx_bytes, check_export(onnx_bytes, model, input_size)


def onnx_metadata(task: str, seq_len: int, cell: str) -> dict[str, str]:
    """What ``lstminfer demo --model`` reads to know the task and the state wiring."""
    h_in, h_out = state_names(cell)
    return {
        "lstminfer.task": task,
        "lstminfer.seq_len": str(seq_len),
        "lstminfer.state": json.dumps(dict(zip(h_in, h_out))),
    }
