"""onnxruntime's ``IOBinding`` for the CPU: inputs and outputs bound to the caller's NumPy buffers.

A binding remembers which arrays feed which inputs and which arrays receive which outputs; the
session (``InferenceSession.run_with_iobinding``) checks them once per change of binding and then
runs the compiled program straight on them, writing each bound output into its buffer: stepping a
model in a loop allocates no array per call (benchmarks/bench_iobinding.py measures it).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .arguments import did_you_mean, strict_keywords
from .errors import InvalidArgumentError
from .ort_value import OrtValue, array_at, check_cpu, element_dtype


class IOBinding:
    """What ``session.io_binding()`` returns (onnxruntime's ``SessionIOBinding`` methods, CPU only)."""

    def __init__(self, session: Any):
        self._session = session
        self._input_names = list(session.input_names)
        self._output_names = list(session.output_names)
        self.inputs: dict[str, Any] = {}  # input name -> the bound array (the caller's object)
        self.outputs: dict[str, np.ndarray | None] = {}  # output name -> its buffer, None: allocated per run
        self.results: list[np.ndarray] = []  # the outputs of the latest run, in binding order
        self.prepared: Any = None  # the session's checked form of these bindings (None: bindings changed)

    # -- inputs ------------------------------------------------------------
    def bind_cpu_input(self, name: str, arr_on_cpu: Any) -> None:
        """Feed input ``name`` from ``arr_on_cpu`` (the array itself: changes to it are seen by later runs)."""
        self._bind_input(name, arr_on_cpu)

    @strict_keywords
    def bind_input(self, name: str, device_type: str, device_id: int, element_type: Any, shape: Sequence[int],
                   buffer_ptr: int) -> None:
        """Feed input ``name`` from the memory at ``buffer_ptr`` (``element_type`` and ``shape``, C order)."""
        check_cpu(device_type, f"bind_input('{name}')")
        what = f"bind_input('{name}')"
        self._bind_input(name, array_at(buffer_ptr, element_dtype(element_type, what), shape, what))

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        self._bind_input(name, _array_of(ortvalue, f"bind_ortvalue_input('{name}')"))

    def _bind_input(self, name: str, value: Any) -> None:
        _check_name(name, self._input_names, "input")
        self.inputs[name] = value
        self.prepared = None

    # -- outputs -----------------------------------------------------------
    @strict_keywords
    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: Sequence[int] | None = None, buffer_ptr: int | None = None) -> None:
        """Write output ``name`` into the memory at ``buffer_ptr`` (``element_type``, ``shape``), or with no
        buffer, into an array each run allocates (``get_outputs``/``copy_outputs_to_cpu`` return it)."""
        what = f"bind_output('{name}')"
        check_cpu(device_type, what)
        buffer = None
        if buffer_ptr is not None:
            if element_type is None or shape is None:
                raise InvalidArgumentError(f"{what}: a buffer_ptr needs its element_type and shape")
            buffer = array_at(buffer_ptr, element_dtype(element_type, what), shape, what)
        self._bind_output(name, buffer)

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        self._bind_output(name, _array_of(ortvalue, f"bind_ortvalue_output('{name}')"))

    def _bind_output(self, name: str, buffer: np.ndarray | None) -> None:
        _check_name(name, self._output_names, "output")
        if buffer is not None and (not buffer.flags.c_contiguous or not buffer.flags.writeable):
            raise InvalidArgumentError(f"output '{name}': the bound buffer must be a writeable C-contiguous array")
        self.outputs.pop(name, None)  # a rebound output moves to the end, as onnxruntime orders them
        self.outputs[name] = buffer
        self.prepared = None

    # -- results -----------------------------------------------------------
    def get_outputs(self) -> list[OrtValue]:
        """The latest run's outputs, in binding order, as OrtValues over the very arrays (bound buffers)."""
        return [OrtValue(a) for a in self.results]

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        """Copies of the latest run's outputs, in binding order."""
        return [np.array(a, copy=True) for a in self.results]

    def clear_binding_inputs(self) -> None:
        self.inputs.clear()
        self.prepared = None

    def clear_binding_outputs(self) -> None:
        self.outputs.clear()
        self.prepared = None

    def synchronize_inputs(self) -> None:
        """Nothing to wait for: CPU memory is always in sync."""

    def synchronize_outputs(self) -> None:
        """Nothing to wait for: CPU memory is always in sync."""


def _array_of(ortvalue: Any, what: str) -> np.ndarray:
    if not isinstance(ortvalue, OrtValue):
        raise InvalidArgumentError(f"{what}: expected an OrtValue, got {type(ortvalue).__name__}")
    return ortvalue.numpy()


def _check_name(name: str, known: list[str], kind: str) -> None:
    if name not in known:
        hint = did_you_mean(str(name), known)
        raise InvalidArgumentError(f"unknown {kind} name '{name}'{hint} (the model's {kind}s are {known})")

