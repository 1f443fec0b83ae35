"""Pure-NumPy oracles: readable, spec-faithful, never optimised.

Fast kernels (Numba, Cython, int8) are tested against these functions.
"""
from .activations import SUPPORTED_ACTIVATIONS, Activation, resolve_activations
from .rnn import (
    DEFAULT_ACTIVATIONS, DIRECTIONS, GATES, SUPPORTED_DTYPES, cell_activations, gru, lstm, rnn,
)

__all__ = [
    "Activation", "DEFAULT_ACTIVATIONS", "DIRECTIONS", "GATES", "SUPPORTED_ACTIVATIONS",
    "SUPPORTED_DTYPES", "cell_activations", "gru", "lstm", "resolve_activations", "rnn",
]
