"""Synthetic sequence tasks from the classic LSTM literature, in NumPy only.

``tools/train.py`` trains on them and ``lstminfer demo`` and the tests score
the bundled models on fresh data from them, so both sides share this module
(the package never needs torch). Every model of these tasks reads
``x: float32 [batch, time, input_size]`` and writes one prediction per step,
``y: float32 [batch, time, 1]``; ``Task.answer`` picks the scored part of
``y`` (it works on NumPy arrays and torch tensors alike).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    input_size: int
    default_seq_len: int
    metric: str               # primary metric, the one early stopping and the margin use
    higher_is_better: bool
    metric_help: str
    x_help: str               # what the model reads at each step
    y_help: str               # what its per-step output y means

    def sample(self, n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` fresh sequences: inputs ``x`` and the target of ``answer(y)``."""
        raise NotImplementedError

    def answer(self, y):
        """The scored part of the per-step outputs ``y [batch, time, 1]``."""
        raise NotImplementedError

    def score(self, answer: np.ndarray, target: np.ndarray, x: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def summary(self, scores: dict[str, float], seq_len: int) -> str:
        raise NotImplementedError

    def reached(self, value: float, goal: float) -> bool:
        return value >= goal if self.higher_is_better else value <= goal


@dataclass(frozen=True)
class AddingProblem(Task):
    """Hochreiter & Schmidhuber (1997), experiment 4, in its modern form.

    Each step carries a value drawn from U[0, 1] and a marker; exactly two
    steps are marked, one in each half of the sequence. The answer, read after
    the last step, is the sum of the two marked values, so the model must keep
    the first one for ~T/2 steps or more. A step counts as solved when the
    absolute error is below ``tolerance`` (0.04, the paper's criterion).
    Always answering 1.0 (the mean) scores about 8%.
    """

    tolerance: float = 0.04

    def sample(self, n, seq_len, rng):
        if seq_len < 2:
            raise ValueError(f"adding problem needs seq_len >= 2, got {seq_len}")
        values = rng.random((n, seq_len))
        half = seq_len // 2
        first = rng.integers(0, half, size=n)
        second = rng.integers(half, seq_len, size=n)
        markers = np.zeros((n, seq_len))
        rows = np.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = np.stack([values, markers], axis=-1).astype(np.float32)
        target = (values[rows, first] + values[rows, second])[:, None].astype(np.float32)
        return x, target

    def answer(self, y):
        return y[:, -1, :]

    def score(self, answer, target, x):
        err = np.abs(np.asarray(answer, np.float64) - np.asarray(target, np.float64))
        return {"accuracy": float(np.mean(err < self.tolerance)), "mse": float(np.mean(err**2))}

    def summary(self, scores, seq_len):
        return (f"adding problem, T={seq_len}: {100 * scores['accuracy']:.1f}% within {self.tolerance:g} "
                f"(MSE {scores['mse']:.2e})")


@dataclass(frozen=True)
class Forecast(Task):
    """Next-value forecasting of a noisy multi-periodic signal.

    Each sequence is a sum of ``components`` sines with random periods,
    amplitudes and phases, plus Gaussian noise of std ``noise``. At each step
    the model sees the noisy value and predicts the next noise-free one. The
    first ``warmup`` predictions are not scored (the model first has to hear
    the periods). Metric: RMSE, next to the repeat-the-last-value baseline.
    """

    components: int = 2
    period_range: tuple[float, float] = (8.0, 40.0)
    amplitude_range: tuple[float, float] = (0.5, 1.0)
    noise: float = 0.1
    warmup: int = 20

    def sample(self, n, seq_len, rng):
        if seq_len <= self.warmup:
            raise ValueError(f"forecast needs seq_len > warmup ({self.warmup}), got {seq_len}")
        k = self.components
        periods = rng.uniform(*self.period_range, size=(n, k, 1))
        amplitudes = rng.uniform(*self.amplitude_range, size=(n, k, 1))
        phases = rng.uniform(0.0, 2 * np.pi, size=(n, k, 1))
        t = np.arange(seq_len + 1)[None, None, :]
        clean = np.sum(amplitudes * np.sin(2 * np.pi * t / periods + phases), axis=1)  # [n, T+1]
        noisy = clean[:, :seq_len] + self.noise * rng.standard_normal((n, seq_len))
        x = noisy[:, :, None].astype(np.float32)
        target = clean[:, self.warmup + 1:, None].astype(np.float32)
        return x, target

    def answer(self, y):
        return y[:, self.warmup:, :]

    def score(self, answer, target, x):
        answer = np.asarray(answer, np.float64)
        target = np.asarray(target, np.float64)
        last_seen = np.asarray(x, np.float64)[:, self.warmup:, :1]
        return {
            "rmse": float(np.sqrt(np.mean((answer - target) ** 2))),
            "baseline_rmse": float(np.sqrt(np.mean((last_seen - target) ** 2))),
        }

    def summary(self, scores, seq_len):
        return (f"forecast, T={seq_len}: RMSE {scores['rmse']:.3f} "
                f"(repeat-last-value baseline {scores['baseline_rmse']:.3f}, noise std {self.noise:g})")


TASKS: dict[str, Task] = {
    "adding": AddingProblem(
        name="adding", title="adding problem (Hochreiter & Schmidhuber 1997)", input_size=2,
        default_seq_len=100, metric="accuracy", higher_is_better=True,
        metric_help="fraction of sequences whose predicted sum is within 0.04 of the true sum",
        x_help="[value in 0..1, marker 0/1] per step",
        y_help="the sum of the two marked values is y[:, -1, 0], read after the last step "
               "(earlier steps are not trained)",
    ),
    "forecast": Forecast(
        name="forecast", title="next-value forecasting of a noisy two-periodic signal", input_size=1,
        default_seq_len=100, metric="rmse", higher_is_better=False,
        metric_help="RMSE of the next noise-free value, steps after the warm-up",
        x_help="the noisy signal value per step",
        y_help="prediction of the next noise-free value; scored from step 20 on (warm-up)",
    ),
}


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None
