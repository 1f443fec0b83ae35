"""v2 infer requests of the sequence extension (``parameters.sequence_id``), run on a ``SequenceManager``.

The client sends only the data input(s) of one chunk (batch 1); the state lives in the server's
stream pool. State inputs (h0/c0) are optional and, with ``sequence_start``, set the initial state.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .protocol import InferRequest, ProtocolError, check_inputs, encode_infer_response
from .sequences import SequenceManager, check_sequence_id


class SequenceRequests:
    """The sequence side of one served model: which inputs carry data, which set the state."""

    def __init__(self, name: str, manager: SequenceManager, inputs: list, outputs: list[str]):
        self.name = name
        self.manager = manager
        self.inputs = inputs
        self.state_inputs = set(manager.pool.state_input_names)
        self.data_inputs = [spec.name for spec in inputs if spec.name not in self.state_inputs]
        self.outputs = outputs  # what a step returns: the model's outputs that are not carried states

    async def infer(self, request: InferRequest) -> tuple[bytes, int | None]:
        params = request.parameters
        sid = check_sequence_id(params["sequence_id"])
        start, end = _flag(params, "sequence_start"), _flag(params, "sequence_end")
        feeds = check_inputs(self.name, self.inputs, request)  # what is given; state inputs may be left out
        names = self._wanted_outputs(request)
        state = {k: v for k, v in feeds.items() if k in self.state_inputs}
        if state and not start:
            raise ProtocolError(400, f"sequence {sid!r}: state inputs ({', '.join(sorted(state))}) set the initial "
                                     "state and are only taken with sequence_start")
        missing = [n for n in self.data_inputs if n not in feeds]
        if missing:
            raise ProtocolError(400, f"sequence {sid!r}: missing input(s) {', '.join(missing)} of model '{self.name}'")
        chunk: Any = feeds[self.data_inputs[0]] if len(self.data_inputs) == 1 else {n: feeds[n] for n in self.data_inputs}
        if start:
            self.manager.start(sid, state=state or None)
        try:
            output = await self.manager.step(sid, chunk)
        finally:
            if end:
                self.manager.end(sid, missing_ok=True)
        values = output if isinstance(output, dict) else {self.outputs[0]: output}
        return encode_infer_response(self.name, request, [(n, np.asarray(values[n])) for n in names])

    def _wanted_outputs(self, request: InferRequest) -> list[str]:
        if request.outputs is None:
            return list(self.outputs)
        for name in request.outputs:
            if name not in self.outputs:
                raise ProtocolError(400, f"model '{self.name}' has no output '{name}' in a sequence (the server keeps "
                                         f"the state; outputs: {', '.join(self.outputs)})")
        return list(request.outputs)


def _flag(params: dict, name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(400, f"parameter '{name}' must be true or false, got {value!r}")
    return value

