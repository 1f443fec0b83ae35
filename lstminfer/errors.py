"""Exception types raised by lstminfer.

Every error names what went wrong (file, node, input) and expected vs. got.
Input and model-format errors subclass ``ValueError`` so that callers that
catch what onnxruntime raises for bad feeds keep working.
"""


class LstminferError(Exception):
    """Base class of every error lstminfer raises on purpose."""


class UnsupportedModelError(LstminferError):
    """The model uses an op, opset, domain, attribute or dtype we do not run."""


class InvalidModelError(LstminferError, ValueError):
    """The model file is malformed, truncated or inconsistent."""


class InvalidInputError(LstminferError, ValueError):
    """A feed is missing, unknown, or has the wrong dtype, rank or shape."""


class InvalidArgumentError(LstminferError, ValueError):
    """A bad argument to an API call (unknown backend, unknown output name...)."""


class BackendUnavailableError(LstminferError, RuntimeError):
    """The requested backend cannot run here (not built, not installed)."""


class ExecutionError(LstminferError, RuntimeError):
    """A node failed while running; the message names the node."""


class NotStreamableError(LstminferError):
    """The model cannot be run chunk by chunk; the message names the node."""
