"""Small PyTorch CRNN models (convolution front-end + LSTM) and their ONNX export, for the tests
and benchmarks of the convolution ops (torch==2.13).

* ``KwsCRNN``: keyword-spotting shape, x [B, T, F] -> Conv1d + BatchNorm1d + ReLU + MaxPool1d(2)
  + a grouped Conv1d -> LSTM -> Linear: y [B, T/2, classes].
* ``OcrCRNN``: OCR shape, image [B, 1, 16, W] -> two Conv2d + BatchNorm2d + ReLU + MaxPool2d
  blocks -> columns [B, W/4, C*H] -> LSTM -> Linear.
* ``CausalCRNN``: the streamable shape, x [B, T, F] -> F.pad((k-1)*d, 0) + Conv1d (dilated) +
  BatchNorm1d + ReLU, then a depthwise causal Conv1d -> LSTM -> Linear: y [B, T, classes].
* ``LookaheadCRNN``: like ``CausalCRNN`` but its Conv1d pads both sides (sees future frames).
* ``ValidCRNN``: the unpadded shape, x [B, T, F] -> Conv1d (dilated, padding=0: T-4 frames) +
  BatchNorm1d + ReLU + MaxPool1d(2) + a strided grouped Conv1d (padding=0, stride 2) -> LSTM ->
  Linear: y [B, ((T-4)//2-3)//2+1, classes]; ``ValidHeadCRNN``: the same with the head on the
  last step only, fc(y[:, -1]).
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FEATURES, CLASSES = 12, 5


def _randomise_batchnorm(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so that folding BatchNorm is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return module.eval()


class KwsCRNN(nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 3, padding=1)
        self.bn = nn.BatchNorm1d(16)
        self.pool = nn.MaxPool1d(2)
        self.grouped = nn.Conv1d(16, 16, 5, padding=2, groups=4, bias=False)
        self.lstm = nn.LSTM(16, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x):  # x [B, T, F]
        z = self.pool(torch.relu(self.bn(self.conv(x.transpose(1, 2)))))
        z = torch.relu(self.grouped(z))
        y, _ = self.lstm(z.transpose(1, 2))
        return self.fc(y)


class OcrCRNN(nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.lstm = nn.LSTM(16 * 4, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, image):  # image [B, 1, 16, W]
        z = self.features(image)  # [B, 16, 4, W/4]
        z = z.permute(0, 3, 1, 2).flatten(2)  # [B, W/4, 64]: one column per time step
        y, _ = self.lstm(z)
        return self.fc(y)


class CausalCRNN(nn.Module):
    def __init__(self, hidden: int = 24, kernel: int = 3, dilation: int = 2):
        super().__init__()
        self.left = (kernel - 1) * dilation
        self.conv = nn.Conv1d(FEATURES, 16, kernel, dilation=dilation)
        self.bn = nn.BatchNorm1d(16)
        self.depthwise = nn.Conv1d(16, 16, 2, groups=16)
        self.lstm = nn.LSTM(16, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x):  # x [B, T, F]
        z = torch.relu(self.bn(self.conv(F.pad(x.transpose(1, 2), (self.left, 0)))))
        z = self.depthwise(F.pad(z, (1, 0)))
        y, _ = self.lstm(z.transpose(1, 2))
        return self.fc(y)


class LookaheadCRNN(nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 5, padding=2)
        self.lstm = nn.LSTM(16, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        y, _ = self.lstm(torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2))
        return self.fc(y)


class ValidCRNN(nn.Module):
    last_step = False

    def __init__(self, hidden: int = 24):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 3, dilation=2)
        self.bn = nn.BatchNorm1d(16)
        self.pool = nn.MaxPool1d(2)
        self.strided = nn.Conv1d(16, 16, 3, stride=2, groups=4)
        self.lstm = nn.LSTM(16, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x):  # x [B, T, F]
        z = self.pool(torch.relu(self.bn(self.conv(x.transpose(1, 2)))))
        y, _ = self.lstm(self.strided(z).transpose(1, 2))
        return self.fc(y[:, -1] if self.last_step else y)


class ValidHeadCRNN(ValidCRNN):
    last_step = True


MODELS = {"kws": KwsCRNN, "ocr": OcrCRNN, "causal": CausalCRNN, "lookahead": LookaheadCRNN, "valid": ValidCRNN,
          "valid-head": ValidHeadCRNN}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_batchnorm(MODELS[name](), seed)


def example(name: str, rng: np.random.Generator, batch: int, time: int) -> np.ndarray:
    """An input: [B, T, F] features, or (ocr) a [B, 1, 16, T] image."""
    shape = (batch, 1, 16, time) if name == "ocr" else (batch, time, FEATURES)
    return rng.standard_normal(shape).astype(np.float32)


def export(name: str, exporter: str = "torchscript", batch: int = 2, time: int = 16, opset: int = 17,
           fold: bool = True, dynamic_time: bool = False) -> bytes:
    """ONNX bytes of model ``name``: torchscript with batch and time dynamic; dynamo with both
    fixed at the example's sizes (torch.export specializes the LSTM's time axis), or with
    ``dynamic_time`` both dynamic (batch_first models: ``Dim.DYNAMIC`` on time). Both exporters
    fold BatchNorm into the Conv before it; torchscript with ``fold=False`` keeps the
    BatchNormalization nodes (no constant folding)."""
    module = build(name)
    x = torch.from_numpy(example(name, np.random.default_rng(0), batch, time))
    time_axis = 3 if name == "ocr" else 1
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                              do_constant_folding=fold,
                              output_names=["y"], dynamic_axes={"x": {0: "batch", time_axis: "time"},
                                                                "y": {0: "batch", 1: "time"}})
            return buf.getvalue()
        dynamic = {"x": {0: torch.export.Dim("batch"), time_axis: torch.export.Dim.AUTO}} if dynamic_time \
            else None
        program = torch.onnx.export(module, (x,), dynamo=True, opset_version=max(opset, 18), input_names=["x"],
                                    output_names=["y"], verbose=False, dynamic_shapes=dynamic)
        return program.model_proto.SerializeToString()


def torch_output(name: str, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build(name)(torch.from_numpy(x)).numpy()


def export_dynamic_dynamo(name: str, time: int = 23) -> bytes:
    """``export(name, "dynamo", dynamic_time=True)`` in a fresh process: after other nn.LSTM exports
    in one process torch.export specializes the time axis anyway (see tests/torch_models.py)."""
    code = ("import sys, conv_models; "
            f"sys.stdout.buffer.write(conv_models.export({name!r}, 'dynamo', time={time}, dynamic_time=True))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"dynamo export of {name} with a dynamic time axis failed:\n"
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout


def valid_frames(time: int) -> int:
    """Output frames of ``ValidCRNN`` for ``time`` input frames (0: too short for one)."""
    conv = time - 4
    pooled = conv // 2 if conv >= 2 else 0
    return (pooled - 3) // 2 + 1 if pooled >= 3 else 0
