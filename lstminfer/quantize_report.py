"""How much a quantized copy of any model changes its outputs: ``lstminfer quantize IN -o OUT --report``.

The float model (IN) and its quantized copy (OUT) run on the same inputs: an ``.npz`` with one
array per model input (``--data``), or inputs generated from the model's input types
(``sample_inputs``). Per output: max and mean abs error of the quantized against the float one.
With a ``labels`` array in the ``.npz``: integer labels score the output that reads as class
scores (its shape the labels' plus a last axis of classes; accuracy of the argmax), float
targets the output of their shape (RMSE); both precisions are scored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgumentError, InvalidInputError
from .listing import brief
from .sample_inputs import sample_feeds

LABEL_KEYS = ("labels", "targets")  # npz keys read as the task's answers, not as inputs
GENERATED_BATCH, GENERATED_TIME = 8, 16


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs_error: float
    mean_abs_error: float


@dataclass(frozen=True)
class Score:
    metric: str  # "accuracy" | "rmse"
    output: str
    float_value: float
    quantized_value: float


@dataclass
class QuantizedComparison:
    inputs: str  # where the inputs came from, and their shapes
    precision: str
    errors: list[OutputError] = field(default_factory=list)
    score: Score | None = None
    note: str = ""  # why labels were not scored

    def text(self) -> str:
        lines = [f"{self.precision} vs float32 on {self.inputs}:",
                 f"  {'output':<20} {'max|err|':>10} {'mean|err|':>10}"]
        lines += [f"  {e.name:<20} {e.max_abs_error:>10.2e} {e.mean_abs_error:>10.2e}" for e in self.errors]
        if self.score is not None:
            s = self.score
            fmt = (lambda v: f"{100 * v:.2f}%") if s.metric == "accuracy" else (lambda v: f"{v:.4g}")
            how = "argmax of its last axis" if s.metric == "accuracy" else "against the targets"
            lines.append(f"  {s.metric} (output '{s.output}', {how}): float32 {fmt(s.float_value)}, "
                         f"{self.precision} {fmt(s.quantized_value)}")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def compare_quantized(src: str | os.PathLike, dst: str | os.PathLike, precision: str, *, data: str | None = None,
                      backend: str = "auto", seed: int = 0) -> QuantizedComparison:
    """Run ``src`` and ``dst`` on the same inputs (``data``: an .npz path, else generated) and compare."""
    from .model import Model

    float_model = Model(src, backend=backend)
    quantized = Model(dst, backend=backend)
    if data is None:
        feeds = sample_feeds(float_model, time=GENERATED_TIME, batch=GENERATED_BATCH, seed=seed)
        labels, where = None, "generated inputs"
    else:
        feeds, labels = read_data(data, float_model.input_names)
        where = os.fspath(data)
    shapes = brief(f"{n} {v.dtype} {list(v.shape)}" for n, v in feeds.items())
    comparison = QuantizedComparison(f"{where} ({shapes})", precision)
    ours = dict(zip(float_model.output_names, float_model.run(None, feeds)))
    theirs = dict(zip(quantized.output_names, quantized.run(None, feeds)))
    for name, value in ours.items():
        if np.asarray(value).dtype.kind != "f":
            continue  # integer outputs (argmax, lengths) have no error to speak of
        error = np.abs(np.asarray(theirs[name], np.float64) - value)
        comparison.errors.append(OutputError(name, float(error.max()) if error.size else 0.0,
                                             float(error.mean()) if error.size else 0.0))
    if labels is not None:
        comparison.score, comparison.note = _score(labels, ours, theirs)
    return comparison


def read_data(path: str | os.PathLike, input_names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(feeds, labels) from an .npz: one array per model input, optionally ``labels`` (or ``targets``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"--data: no such file '{os.fspath(path)}'") from None
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"--data '{os.fspath(path)}' is not a readable .npz: {e}") from None
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key) if label_key else None
    unknown = [k for k in arrays if k not in input_names]
    missing = [n for n in input_names if n not in arrays]
    if unknown or missing:
        raise InvalidInputError(
            f"--data '{os.fspath(path)}' must hold one array per model input ({brief(input_names)}) and "
            f"optionally {' or '.join(LABEL_KEYS)}" + (f"; unknown: {brief(unknown)}" if unknown else "")
            + (f"; missing: {brief(missing)}" if missing else ""))
    return arrays, labels


def _score(labels: np.ndarray, ours: dict, theirs: dict) -> tuple[Score | None, str]:
    if labels.dtype.kind in "iub":
        for name, scores in ours.items():
            scores = np.asarray(scores)
            if scores.dtype.kind == "f" and scores.ndim == labels.ndim + 1 and scores.shape[:-1] == labels.shape \
                    and scores.shape[-1] > 1:
                return Score("accuracy", name, _accuracy(scores, labels), _accuracy(theirs[name], labels)), ""
        return None, (f"labels {labels.dtype} {list(labels.shape)}: no output reads as class scores "
                      f"{list(labels.shape) + ['classes']}; accuracy not computed")
    if labels.dtype.kind == "f":
        for name, values in ours.items():
            values = np.asarray(values)
            if values.dtype.kind == "f" and values.size == labels.size and \
                    values.squeeze().shape == labels.squeeze().shape:
                return Score("rmse", name, _rmse(values, labels), _rmse(theirs[name], labels)), ""
        return None, f"targets {labels.dtype} {list(labels.shape)}: no output has their shape; RMSE not computed"
    return None, f"labels of type {labels.dtype} are neither integer classes nor float targets; not scored"


def _accuracy(scores, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(scores), axis=-1) == labels))


def _rmse(values, targets: np.ndarray) -> float:
    diff = np.asarray(values, np.float64).reshape(-1) - targets.astype(np.float64).reshape(-1)
    return float(np.sqrt(np.mean(diff ** 2)))
