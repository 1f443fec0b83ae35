"""The command line's exit codes, one rule for every command.

0: done (and every check passed); 1: a run or a check failed (the model could not be loaded or
run, outputs disagree); 2: a usage error (bad arguments, a missing file, inputs that do not fit
the model, a backend that is not here), as argparse exits on bad options.
"""
from __future__ import annotations

from .errors import BackendUnavailableError, InvalidArgumentError, InvalidInputError

OK, FAILED, USAGE = 0, 1, 2

_USAGE_ERRORS = (FileNotFoundError, IsADirectoryError, InvalidArgumentError, InvalidInputError,
                 BackendUnavailableError)


def for_error(error: BaseException) -> int:
    """USAGE for what the caller got wrong, FAILED for anything else."""
    return USAGE if isinstance(error, _USAGE_ERRORS) else FAILED
