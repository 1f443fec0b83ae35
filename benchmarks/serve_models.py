"""The models of ``lstminfer serve``'s benchmark scenarios, exported at benchmark time.

PyTorch modules with a fixed seed, exported by the TorchScript exporter at opset 17
(as ``whole_models.py`` does), batch first, state in and out:

========  ===================================================================================
scenario  model
========  ===================================================================================
a         nn.LSTM(40, 256, batch_first) + Linear(256, 40) on every step: per-frame streaming
b         2-layer nn.LSTM(40, 256, batch_first) + Linear(256, 40): chunked streaming
========  ===================================================================================

Inputs ``x [B, T, 40]``, ``h0``/``c0 [layers, B, 256]``; outputs ``y [B, T, 40]``,
``h_n``/``c_n [layers, B, 256]`` (B and T dynamic). A WebSocket chunk of either model is
``[T, 40]`` float32 and its reply ``[T, 40]``.

``python benchmarks/serve_models.py a [--out DIR]`` writes the model and prints its path.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

OPSET = 17
SEED = 0
FEATURES = 40


@dataclass(frozen=True)
class Scenario:
    name: str
    layers: int
    hidden: int
    frames_per_chunk: int  # T of one chunk
    period_ms: float  # real time of one frame: a chunk is sent every T * period_ms

    @property
    def chunk_interval_ms(self) -> float:
        return self.frames_per_chunk * self.period_ms

    @property
    def file_name(self) -> str:
        return f"serve_{self.name}_lstm{self.layers}_h{self.hidden}.onnx"


SCENARIOS = {
    "a": Scenario("a", layers=1, hidden=256, frames_per_chunk=1, period_ms=20.0),
    "b": Scenario("b", layers=2, hidden=256, frames_per_chunk=10, period_ms=10.0),
}


def export_lstm(path: Path, layers: int, hidden: int, features: int = FEATURES, seed: int = SEED) -> str:
    """nn.LSTM(features, hidden, layers, batch_first) + Linear(hidden, features) to ONNX at ``path``."""
    import torch
    from torch import nn

    class LstmWithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
            self.head = nn.Linear(hidden, features)

        def forward(self, x, h0, c0):
            y, (h_n, c_n) = self.lstm(x, (h0, c0))
            return self.head(y), h_n, c_n

    torch.manual_seed(seed)
    module = LstmWithHead().eval()
    args = (torch.zeros((2, 3, features)), torch.zeros((layers, 2, hidden)), torch.zeros((layers, 2, hidden)))
    seq, state = {0: "batch", 1: "time"}, {1: "batch"}
    axes = {"x": seq, "y": seq, "h0": state, "c0": state, "h_n": state, "c_n": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter prints and warns about the LSTM's batch_first layout: not ours to show.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=["x", "h0", "c0"], output_names=["y", "h_n", "c_n"],
                          dynamic_axes=axes)
    return str(path)


def build(scenario: str, out_dir: Path) -> str:
    """The scenario's model in ``out_dir`` (exported once; reused when the file exists)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {sorted(SCENARIOS)}")
    spec = SCENARIOS[scenario]
    path = Path(out_dir) / spec.file_name
    if path.exists():
        return str(path)
    return export_lstm(path, spec.layers, spec.hidden)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--out", default="/tmp/lstminfer-serve-bench", help="directory of the .onnx files")
    args = parser.parse_args(argv)
    print(build(args.scenario, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
