"""onnxruntime's ``SessionOptions``, ``RunOptions``, their enums and the provider functions.

Code written for onnxruntime builds these and hands them to ``InferenceSession``; lstminfer takes
each field, uses the ones that mean something here and documents the rest as accepted and ignored
(the README's onnxruntime compatibility table says why for each). Fields are slots: a misspelled
one is an ``AttributeError`` naming the closest real one, as onnxruntime's own object refuses it.
"""
from __future__ import annotations

import enum
from typing import Any

from .arguments import did_you_mean, warn_caller
from .cores import available_cores
from .errors import InvalidArgumentError

CPU_PROVIDER = "CPUExecutionProvider"

# onnxruntime 1.2x's get_all_providers(): the names code may ask for (only CPU runs here).
ALL_PROVIDERS = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "MIGraphXExecutionProvider", "ROCMExecutionProvider",
    "OpenVINOExecutionProvider", "DnnlExecutionProvider", "VitisAIExecutionProvider", "QNNExecutionProvider",
    "NnapiExecutionProvider", "VSINPUExecutionProvider", "JsExecutionProvider", "CoreMLExecutionProvider",
    "ArmNNExecutionProvider", "ACLExecutionProvider", "DmlExecutionProvider", "RknpuExecutionProvider",
    "WebNNExecutionProvider", "WebGpuExecutionProvider", "XnnpackExecutionProvider", "CANNExecutionProvider",
    "AzureExecutionProvider", CPU_PROVIDER,
)


class GraphOptimizationLevel(enum.IntEnum):
    """onnxruntime's graph optimization levels. Accepted; lstminfer always folds constants and compiles
    each signature into one program (``Model.describe``), whatever the level: results do not change."""

    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    """onnxruntime's execution modes. Accepted; nodes run one after another in either mode (an LSTM
    model's nodes depend on each other, and the recurrent kernels use ``threads`` inside one node)."""

    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


def get_available_providers() -> list[str]:
    """The execution providers that run here: the CPU only."""
    return [CPU_PROVIDER]


def get_all_providers() -> list[str]:
    """Every provider name onnxruntime knows (asking for one but CPU warns and runs on the CPU)."""
    return list(ALL_PROVIDERS)


def get_device() -> str:
    """The device models run on: always "CPU"."""
    return "CPU"


def machine_cores() -> int:
    """The cores this process may run on: affinity and cgroup CPU limit (``lstminfer.cores``)."""
    return available_cores()


def provider_settings(providers: Any, provider_options: Any) -> dict[str, str]:
    """The CPU provider's options from onnxruntime's ``providers``/``provider_options`` arguments, after
    checking them as onnxruntime does; a provider other than the CPU warns as onnxruntime's does when
    it is not available (and the model runs on the CPU)."""
    if providers is None:
        if provider_options is not None:
            raise InvalidArgumentError("provider_options given without providers")
        return {}
    if isinstance(providers, str) or not isinstance(providers, (list, tuple)):
        raise InvalidArgumentError(f"providers must be a list of provider names or (name, options) tuples, "
                                   f"got {providers!r}")
    if provider_options is not None and (not isinstance(provider_options, (list, tuple))
                                         or len(provider_options) != len(providers)):
        raise InvalidArgumentError("'providers' and 'provider_options' should be the same length if both are given")
    cpu: dict[str, str] = {}
    for k, entry in enumerate(providers):
        name, options = entry, (provider_options[k] if provider_options is not None else None)
        if isinstance(entry, tuple) and len(entry) == 2:
            name, options = entry
        if not isinstance(name, str):
            raise InvalidArgumentError(f"providers[{k}]: expected a provider name, got {entry!r}")
        if options is not None and not isinstance(options, dict):
            raise InvalidArgumentError(f"provider options for '{name}' must be a dict, got {options!r}")
        if name == CPU_PROVIDER:
            cpu.update({str(key): str(value) for key, value in (options or {}).items()})
        else:
            warn_caller(f"Specified provider '{name}' is not in available provider names."
                        f"Available providers: '{CPU_PROVIDER}' (lstminfer runs on the CPU)")
    return cpu


class _Slots:
    """Fields as slots; setting an unknown one names the closest known one."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _public_fields(type(self)):
            hint = did_you_mean(name, _public_fields(type(self)))
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'{hint}")
        object.__setattr__(self, name, value)

    def _config_entry(self, entries: dict, key: str, what: str) -> str:
        try:
            return entries[key]
        except KeyError:
            raise RuntimeError(f"{what} does not have configuration with key: {key}") from None  # as onnxruntime


def _public_fields(cls: type) -> list[str]:
    return [n for c in cls.__mro__ for n in getattr(c, "__slots__", ()) if not n.startswith("_")]


class SessionOptions(_Slots):
    """onnxruntime's ``SessionOptions``. What each field does here:

    * ``intra_op_num_threads``: lstminfer's ``threads`` (cores one recurrent kernel may use);
      0, onnxruntime's "pick for me", means lstminfer's default of 1.
    * ``enable_profiling`` / ``profile_file_prefix``: each ``run`` is timed and ``end_profiling()``
      writes the events as a Chrome trace JSON (``<prefix>_<date>.json``), as onnxruntime does
      (one event per run here, not per node).
    * ``graph_optimization_level``, ``execution_mode``, ``inter_op_num_threads``,
      ``enable_cpu_mem_arena``, ``enable_mem_pattern``, ``enable_mem_reuse``,
      ``use_deterministic_compute``, ``log_severity_level``, ``log_verbosity_level``, ``logid``,
      session config entries: accepted and ignored (lstminfer always optimises, runs nodes in order,
      reuses its per-call memory, gives the same bits on every call, and logs nothing).
    * ``optimized_model_filepath``: nothing is written there (lstminfer's optimised form is its
      compiled program, not an ONNX graph); the session warns when it is set.
    """

    __slots__ = ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "execution_mode",
                 "log_severity_level", "log_verbosity_level", "logid", "enable_profiling", "profile_file_prefix",
                 "optimized_model_filepath", "enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse",
                 "use_deterministic_compute", "use_per_session_threads", "_config")

    def __init__(self) -> None:
        self.intra_op_num_threads = 0
        self.inter_op_num_threads = 0
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.execution_mode = ExecutionMode.ORT_SEQUENTIAL
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.enable_profiling = False
        self.profile_file_prefix = "onnxruntime_profile_"
        self.optimized_model_filepath = ""
        self.enable_cpu_mem_arena = True
        self.enable_mem_pattern = True
        self.enable_mem_reuse = True
        self.use_deterministic_compute = False
        self.use_per_session_threads = True
        object.__setattr__(self, "_config", {})

    def add_session_config_entry(self, key: str, value: str) -> None:
        """Stored (``get_session_config_entry`` returns it); no entry changes how lstminfer runs."""
        self._config[str(key)] = str(value)

    def get_session_config_entry(self, key: str) -> str:
        return self._config_entry(self._config, key, "SessionOptions")


def threads_of(options: SessionOptions) -> int | None:
    """lstminfer's ``threads`` for ``options`` (None: lstminfer's default)."""
    n = options.intra_op_num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgumentError(f"SessionOptions.intra_op_num_threads must be an integer >= 0, got {n!r}")
    return n or None


class RunOptions(_Slots):
    """onnxruntime's ``RunOptions``: accepted and ignored. ``log_*`` and ``logid`` (lstminfer logs nothing),
    ``only_execute_path_to_fetches`` (lstminfer only ever computes what the requested outputs need),
    ``terminate`` (a run is not interrupted once started) and run config entries."""

    __slots__ = ("log_severity_level", "log_verbosity_level", "logid", "only_execute_path_to_fetches", "terminate",
                 "_config")

    def __init__(self) -> None:
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.only_execute_path_to_fetches = False
        self.terminate = False
        object.__setattr__(self, "_config", {})

    def add_run_config_entry(self, key: str, value: str) -> None:
        self._config[str(key)] = str(value)

    def get_run_config_entry(self, key: str) -> str:
        return self._config_entry(self._config, key, "RunOptions")



def get_version_string() -> str:
    """lstminfer's version (onnxruntime's function returns onnxruntime's)."""
    import sys

    return sys.modules[__package__].__version__  # the package, imported before any of its modules


def get_build_info() -> str:
    return f"lstminfer {get_version_string()}, CPU only"


def set_default_logger_severity(severity: int) -> None:
    """Accepted and ignored: lstminfer logs nothing."""


def set_default_logger_verbosity(verbosity: int) -> None:
    """Accepted and ignored: lstminfer logs nothing."""


def set_seed(seed: int) -> None:
    """Accepted and ignored: no op lstminfer runs draws random numbers."""


def disable_telemetry_events() -> None:
    """Accepted: lstminfer sends no telemetry."""


def enable_telemetry_events() -> None:
    """Accepted: lstminfer sends no telemetry."""
