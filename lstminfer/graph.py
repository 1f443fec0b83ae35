"""A small internal graph, independent of protobuf.

Only ``onnx_import`` knows about ``onnx``; everything else (planner, ops,
tests) works on these plain objects, so graphs can be built by hand.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_MISSING = object()


@dataclass(frozen=True)
class ValueInfo:
    """A graph input/output: name, element dtype, shape (ints, symbolic str, None)."""

    name: str
    dtype: np.dtype | None = None
    shape: tuple[int | str | None, ...] | None = None
    kind: str = "tensor"  # "tensor" | "sequence" | "optional" | "optional_sequence"

    def type_string(self) -> str:
        """The type as onnxruntime prints it, e.g. ``tensor(float)``."""
        from .dtypes import onnx_type_name

        inner = f"tensor({onnx_type_name(self.dtype)})"
        return {
            "sequence": f"seq({inner})",
            "optional": f"optional({inner})",
            "optional_sequence": f"optional(seq({inner}))",
        }.get(self.kind, inner)


@dataclass
class Node:
    """One operator call. ``inputs`` uses "" for an omitted optional input.

    ``attrs`` holds plain Python values: int, float, str, bytes, lists of
    those, ``np.ndarray`` for tensors and ``Graph`` for subgraphs.
    """

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""  # "" is the default ONNX domain (ai.onnx)

    def attr(self, name: str, default: Any = _MISSING) -> Any:
        """Attribute value, or ``default``; a required one raises if absent."""
        if name in self.attrs:
            return self.attrs[name]
        if default is _MISSING:
            from .errors import InvalidModelError

            raise InvalidModelError(f"{self.label()}: required attribute '{name}' is missing")
        return default

    def label(self) -> str:
        """How errors name this node: ``node 'name' (OpType)``."""
        domain = f"{self.domain}:" if self.domain not in ("", "ai.onnx") else ""
        shown = self.name or (self.outputs[0] if self.outputs else "?")
        return f"node '{shown}' ({domain}{self.op_type})"

    def subgraphs(self) -> list[Graph]:
        out: list[Graph] = []
        for value in self.attrs.values():
            if isinstance(value, Graph):
                out.append(value)
            elif isinstance(value, list):
                out.extend(v for v in value if isinstance(v, Graph))
        return out


@dataclass
class Graph:
    """A graph: nodes in file order, its inputs/outputs and constant initializers."""

    nodes: list[Node]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    # Inferred shapes of intermediate values; read-only, and from a file inferred on first
    # use (onnx_import.LazyValueInfo): only describe() and the streaming analysis need it.
    value_info: Mapping[str, ValueInfo] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=lambda: {"": 17})
    name: str = "graph"

    def free_names(self) -> list[str]:
        """Names this graph (or its nested subgraphs) reads from an enclosing scope."""
        defined = {vi.name for vi in self.inputs} | set(self.initializers)
        free: list[str] = []
        seen: set[str] = set()

        def use(name: str) -> None:
            if name and name not in defined and name not in seen:
                seen.add(name)
                free.append(name)

        for node in self.nodes:
            for name in node.inputs:
                use(name)
            for sub in node.subgraphs():
                for name in sub.free_names():
                    use(name)
            defined.update(node.outputs)
        for vi in self.outputs:
            use(vi.name)
        return free
