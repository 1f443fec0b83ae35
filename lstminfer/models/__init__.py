"""Models shipped with lstminfer, trained and exported by ``tools/train.py``.

Each model is ``NAME.onnx`` with a ``NAME.json`` metadata file next to it
(task, input/output meaning, metric reached and its margin, the exact
command that reproduces it, the device it was trained on).
``TASK_metrics.json`` files record every cell trained for a task, including
the ones not shipped (the plain RNN that fails the adding problem).

    import lstminfer, lstminfer.models
    lstminfer.models.available()              # ['adding_lstm', 'forecast_gru', 'forecast_lstm']
    model = lstminfer.load(lstminfer.models.path("adding_lstm"))
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgumentError

DEFAULT = "adding_lstm"  # what ``lstminfer demo`` runs with no argument

_HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(p.stem for p in _HERE.glob("*.onnx") if p.with_suffix(".json").is_file())


def path(name: str) -> str:
    """Path of the bundled model ``name``'s .onnx file."""
    return str(_file(name, ".onnx"))


def metadata(name: str) -> dict:
    """The bundled model ``name``'s metadata (the parsed NAME.json)."""
    import json  # here: not on the path of a plain load (cold start)

    return json.loads(_file(name, ".json").read_text())


def _file(name: str, suffix: str) -> Path:
    names = available()
    if name not in names:
        raise InvalidArgumentError(f"no bundled model named {name!r}; available: {', '.join(names) or '(none)'}")
    return _HERE / f"{name}{suffix}"
