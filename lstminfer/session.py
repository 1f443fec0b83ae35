"""``InferenceSession``: ``Model`` with onnxruntime's constructor order and the rest of its session API.

``InferenceSession(path_or_bytes, sess_options=None, providers=None, provider_options=None, **options)``
takes its arguments in onnxruntime's positional order (``Model``'s second positional argument is
``backend``); lstminfer's own options (``backend``, ``threads``, ``quantize``, ...) are keywords.
On top of ``Model`` it adds what onnxruntime code calls beyond ``run``: ``io_binding`` and
``run_with_iobinding`` (outputs written into the caller's buffers), ``run_with_ort_values``,
``run_async``, ``get_session_options``, ``get_provider_options``, ``set_providers`` and profiling
(``end_profiling``).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .arguments import check_keywords, keyword_names, strict_keywords
from .errors import InvalidArgumentError, LstminferError
from .io_binding import IOBinding
from .model import Model
from .ort_value import OrtValue
from .session_options import CPU_PROVIDER, RunOptions, SessionOptions, provider_settings

# The keywords InferenceSession takes: Model's (so a keyword added to Model is taken here too).
_OWN_OPTIONS = keyword_names(Model.__init__) - {"model"}
_ASYNC_WORKERS = 4  # run_async's pool: enough to overlap a few runs; each run uses ``threads`` cores itself
_pool = None
_pool_lock = threading.Lock()


class InferenceSession(Model):
    """A model loaded for running, built as onnxruntime's ``InferenceSession`` is.

    ``path_or_bytes``: a file path, the model's bytes or an ``onnx.ModelProto``; ``sess_options``: a
    ``SessionOptions`` (``intra_op_num_threads`` sets ``threads``; ``enable_profiling`` times each run);
    ``providers``: only "CPUExecutionProvider" runs here, any other warns and runs on the CPU.
    Keywords: ``backend`` ("auto", "cython", "numba" or "reference"), ``threads``, ``quantize``
    ("int8" or "bf16") as ``lstminfer.load`` takes them.
    """

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None, providers: Any = None,
                 provider_options: Any = None, **options: Any):
        check_keywords("InferenceSession()", options, _OWN_OPTIONS)
        super().__init__(path_or_bytes, sess_options=sess_options, providers=providers,
                         provider_options=provider_options, **options)
        self._profile: list[dict] | None = None
        if self.session_options.enable_profiling:
            self._start_profiling()

    # -- options and providers ---------------------------------------------
    def get_session_options(self) -> SessionOptions:
        return self.session_options

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CPU_PROVIDER: dict(self.cpu_provider_options)}

    @strict_keywords
    def set_providers(self, providers: Any = None, provider_options: Any = None) -> None:
        """As onnxruntime's: checks the list (any provider but the CPU warns); the session runs on the CPU."""
        self.cpu_provider_options = provider_settings(providers, provider_options)

    def disable_fallback(self) -> None:
        """Accepted: there is no other provider to fall back from."""

    def enable_fallback(self) -> None:
        """Accepted: there is no other provider to fall back from."""

    # -- profiling ---------------------------------------------------------
    def _start_profiling(self) -> None:
        self._profile = []
        self._profile_start = time.perf_counter_ns()
        self._profile_start_epoch_ns = time.time_ns()
        self._profile_lock = threading.Lock()
        plain_run = self.run

        def profiled_run(output_names, input_feed, run_options=None):
            start = time.perf_counter_ns()
            try:
                return plain_run(output_names, input_feed, run_options)
            finally:
                end = time.perf_counter_ns()
                with self._profile_lock:
                    self._profile.append({"cat": "Session", "pid": os.getpid(), "tid": threading.get_ident(),
                                          "dur": (end - start) // 1000, "ts": (start - self._profile_start) // 1000,
                                          "ph": "X", "name": "model_run", "args": {}})

        self.run = profiled_run

    def end_profiling(self) -> str:
        """Write the profile (Chrome trace JSON: one event per run) and return its file name; "" when
        profiling is off, as onnxruntime does."""
        if self._profile is None:
            return ""
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        path = f"{self.session_options.profile_file_prefix}_{stamp}.json"
        with self._profile_lock:
            events, self._profile = self._profile, []
        import json  # here: only a profiled session needs it

        with open(path, "w") as f:
            json.dump(events, f)
        return path

    def get_profiling_start_time_ns(self) -> int:
        """When profiling started, in ns since the epoch (0 when profiling is off)."""
        return getattr(self, "_profile_start_epoch_ns", 0)

    # -- io binding --------------------------------------------------------
    def io_binding(self) -> IOBinding:
        return IOBinding(self)

    @strict_keywords
    def run_with_iobinding(self, iobinding: IOBinding, run_options: RunOptions | None = None) -> None:
        """Run on the bound inputs; each bound output is written into its buffer (no allocation)."""
        prepared = iobinding.prepared
        if prepared is None or prepared[0] is not self:
            prepared = iobinding.prepared = self._prepare_binding(iobinding)
        outputs = prepared[1](prepared[2], prepared[3])  # the compiled program, in C, into the buffers
        if outputs is None:  # no compiled program for these feeds (or it declined): the checked path, copied
            outputs = _copied_into(self._run_checked(prepared[4], iobinding.inputs), prepared[3], prepared[4])
        iobinding.results = outputs

    def _prepare_binding(self, iobinding: IOBinding) -> tuple:
        """The binding checked once: (session, its programs' run, feeds in input order, output buffers, names)."""
        if iobinding._session is not self:
            raise InvalidArgumentError("run_with_iobinding: this IOBinding belongs to another session")
        names = list(iobinding.outputs) or self.output_names
        feeds = self._feeds.checked(iobinding.inputs)
        programs = self._programs_for(self._wanted(names))
        into = [iobinding.outputs.get(n) for n in names]
        return (self, programs.fast.run if programs.fast is not None else _not_compiled, feeds, into, names)

    # -- OrtValues and async -----------------------------------------------
    @strict_keywords
    def run_with_ort_values(self, output_names: Sequence[str] | None, input_dict_ort_values: Mapping[str, OrtValue],
                            run_options: RunOptions | None = None) -> list[OrtValue]:
        """``run`` on OrtValues, returning OrtValues."""
        if not isinstance(input_dict_ort_values, Mapping):
            raise InvalidArgumentError("run_with_ort_values: inputs must be a dict name -> OrtValue")
        feeds = {}
        for name, value in input_dict_ort_values.items():
            if not isinstance(value, OrtValue):
                raise InvalidArgumentError(f"run_with_ort_values: input '{name}' is a {type(value).__name__}, "
                                           "not an OrtValue (OrtValue.ortvalue_from_numpy makes one)")
            feeds[name] = value.numpy()
        return [OrtValue(a) for a in self.run(output_names, feeds, run_options)]

    @strict_keywords
    def run_async(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
                  callback: Callable[[list, Any, str], None], user_data: Any = None,
                  run_options: RunOptions | None = None) -> None:
        """``run`` on a small thread pool; then ``callback(results, user_data, err)`` with ``err`` "" on
        success, or ``results`` [] and ``err`` the error message, as onnxruntime calls it."""
        if not callable(callback):
            raise InvalidArgumentError(f"run_async: callback must be callable, got {type(callback).__name__}")
        self._wanted(output_names)  # a bad output name fails here, in the caller's thread
        _async_pool().submit(self._run_then_call, output_names, dict(input_feed), callback, user_data, run_options)

    def _run_then_call(self, output_names, feeds, callback, user_data, run_options) -> None:
        try:
            results = self.run(output_names, feeds, run_options)
        except (LstminferError, ValueError, TypeError, RuntimeError) as e:
            callback([], user_data, str(e))
            return
        callback(results, user_data, "")


def _async_pool():
    """The shared pool of run_async (made on first use: concurrent.futures stays off a plain load's path)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from concurrent.futures import ThreadPoolExecutor

                _pool = ThreadPoolExecutor(_ASYNC_WORKERS, thread_name_prefix="lstminfer-run-async")
    return _pool


def _not_compiled(feeds: list, into: list) -> None:
    """The programs' run without the native extension: never runs (the checked path does)."""
    return None


def _copied_into(outputs: list, into: list, names: list[str]) -> list:
    """``outputs`` with each bound one copied into its buffer (and the buffer returned in its place)."""
    result = []
    for name, value, buffer in zip(names, outputs, into or [None] * len(outputs)):
        if buffer is None:
            result.append(value)
            continue
        value = np.asarray(value)
        if value.shape != buffer.shape or value.dtype != buffer.dtype:
            raise InvalidArgumentError(
                f"output '{name}' is bound to a buffer of {buffer.dtype} {buffer.shape}, but this run gives "
                f"{value.dtype} {value.shape}: bind a buffer of that shape, or bind the output by name only")
        np.copyto(buffer, value)
        result.append(buffer)
    return result
