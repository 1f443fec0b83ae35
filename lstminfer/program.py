"""The compiled program: a plan specialised for one signature of its feeds, run in C.

A plan runs node by node, each node a Python call. For a given signature (each feed's dtype
and shape) most of that work is known before any number arrives: shapes, the exporters'
Shape/Gather/Concat arithmetic on them, where each value lives. On the first call with a new
signature ``compile_program`` runs the plan once (the trace) and turns it into a
``_runtime.Program`` (``program_compiler`` decides what becomes of each node):

* values computed from shapes alone are folded into constants;
* shape-only ops whose NumPy kernel returned a view become that view: an offset and strides
  over their input's memory, and no instruction at all;
* recurrent nodes on the Cython kernels, dense heads (MatMul/Gemm with a constant weight and
  the Add of its bias), elementwise ops, Softmax, Concat and Gather become C instructions over
  preallocated memory, outputs written straight into the arrays returned;
* every other op calls its NumPy kernel inside the same program, on views of that memory.

``Programs`` keeps one program per signature and is what ``Model``, ``Stream``, ``StreamPool``
and subgraph bodies run (through ``_runtime.ProgramSet``, which recognises a repeated
signature in C). A program declines (returns None, having written nothing the caller sees)
when an op's result differs from its compiled signature; the caller then runs the plan.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import LstminferError
from .c_runtime import _runtime
from .plan import Plan
from .program_compiler import CompileDeclined, Compiler, is_pinned

_MAX_PROGRAMS = 32  # signatures kept per model (the least recently used goes, once idle: below)
# A full cache drops its least recently used program only once that one has sat unused through this many
# lookups: where more signatures than it keeps come round in turn, dropping the one used a moment ago to
# compile the next would compile on every few steps (a compile costs a run of the plan and more).
_IDLE_LOOKUPS_BEFORE_EVICTION = 4 * _MAX_PROGRAMS
_USES_PER_COMPILE = 4  # past the first few, a signature compiles only while programs are used this much


@dataclass(frozen=True)
class NotCompiled:
    """Why a signature has no program (its calls take the plan's general path)."""

    reason: str


def compile_program(plan: Plan, wanted: tuple[int, ...], feeds: Sequence[Any], body: bool = False,
                    pinned: frozenset[int] = frozenset(), shared: dict | None = None):
    """The ``_runtime.Program`` of ``plan`` for ``wanted`` and the signature of ``feeds`` (which it
    runs once, as the trace), or ``NotCompiled`` saying why this plan cannot be compiled for it."""
    if _runtime is None:
        return NotCompiled("lstminfer._native._runtime is not built")
    try:
        return Compiler(plan, wanted, feeds, body, pinned, shared).run()
    except (CompileDeclined, LstminferError) as e:
        return NotCompiled(str(e))


def signature(feeds: Sequence[Any]) -> tuple | None:
    """(dtype, shape) of each feed; None when one is not an ndarray (no program then)."""
    key = []
    for f in feeds:
        if f.__class__ is not np.ndarray:
            return None
        key.append((f.dtype.str, f.shape) if f.flags.c_contiguous else (f.dtype.str, f.shape, f.strides))
    return tuple(key)


class Programs:
    """One compiled program per signature of ``plan``'s feeds for ``wanted`` (compiled on first
    sight, kept for up to _MAX_PROGRAMS signatures), with the C fast path for a repeated one.

    ``body``: the programs of a subgraph body (Loop/Scan/If), run once per iteration. Read-only
    feeds that stay the same object from iteration to iteration (values from the enclosing
    graph, and loop-carried values the body hands back unchanged: tf2onnx carries its weights
    that way) are compiled in as constants, so that their MatMuls become dense instructions;
    such a program only accepts those very objects (its signature holds their identity)."""

    def __init__(self, plan: Plan, wanted: tuple[int, ...], body: bool = False):
        self.plan, self.wanted, self.body = plan, wanted, body
        self._by_signature: OrderedDict[tuple, Any] = OrderedDict()  # least recently used first
        self._pins: dict[tuple, tuple[int, ...]] = {}  # a body's shapes -> the feeds it pins
        self._uses = self._compiles = 0  # programs run through lookup / compiled
        self._lookups = 0  # calls of ``lookup``: the clock of ``_used_at``
        self._used_at: dict[tuple, int] = {}  # signature -> ``_lookups`` when its program last ran through lookup
        self._shared: dict = {}  # weights laid out for the instructions, made once for all signatures
        self._lock = threading.Lock()
        self.fast = _runtime.ProgramSet(self.lookup, self.find) if _runtime is not None else None
        for sub in plan.bodies:  # each body runs once per iteration (``Plan.run``): its own programs
            if sub.programs is None:
                sub.programs = Programs(sub, sub.all_outputs, body=True)

    def _key(self, feeds: Sequence[Any]) -> tuple | None:
        shapes = signature(feeds)
        if shapes is None or not self.body:
            return shapes
        pins = self._pins.get(shapes)
        if pins is None:
            return None
        return shapes + tuple(id(feeds[k]) for k in pins)

    def find(self, feeds: Sequence[Any]):
        """The program already compiled for ``feeds``' signature, or None."""
        program = self._by_signature.get(self._key(feeds))
        return None if isinstance(program, NotCompiled) else program

    def lookup(self, feeds: Sequence[Any]):
        """The program for ``feeds``' signature (compiled on first sight: every call of a signature
        then gives the same bits), or None. Where signatures keep changing and their programs
        are seldom used again (every sequence a new length), compiling stops after a few
        (``_worth_compiling``) and the plan runs the new ones, as it would without programs."""
        key = self._key(feeds)
        program = self._by_signature.get(key) if key is not None else None
        self._lookups += 1
        if program is not None:
            try:
                self._by_signature.move_to_end(key)
            except KeyError:  # dropped by another thread's compile meanwhile: still good to run
                pass
            self._used_at[key] = self._lookups
            self._uses += 1
        else:
            with self._lock:
                if not self._worth_compiling() or not self._room_for_one_more():
                    return None
                program = self._compile(feeds)
        return None if isinstance(program, NotCompiled) else program

    def _room_for_one_more(self) -> bool:
        """The cache has room, or its least recently used program has been idle long enough to go."""
        if len(self._by_signature) < _MAX_PROGRAMS:
            return True
        oldest = next(iter(self._by_signature))
        return self._lookups - self._used_at.get(oldest, 0) >= _IDLE_LOOKUPS_BEFORE_EVICTION

    def _worth_compiling(self) -> bool:
        """A compile costs a run of the plan and more: worth it while the programs made so far
        have each been used at least _USES_PER_COMPILE times on average."""
        uses = self._uses + (self.fast.hits if self.fast is not None else 0)
        return self._compiles < _USES_PER_COMPILE or self._compiles * _USES_PER_COMPILE <= uses

    def _compile(self, feeds: Sequence[Any]):
        shapes = signature(feeds)
        if shapes is None:
            return NotCompiled("a feed is not an ndarray")
        pins: tuple[int, ...] = ()
        if self.body:
            pins = self._pins.get(shapes)
            if pins is None:  # which read-only feeds stay put: those of a first, unpinned program
                first = compile_program(self.plan, self.wanted, feeds, body=True, shared=self._shared)
                pins = self._pins[shapes] = _steady_feeds(first, self.plan, feeds)
        key = shapes + tuple(id(feeds[k]) for k in pins) if self.body else shapes
        program = self._by_signature.get(key)
        if program is None:
            self._compiles += 1
            program = compile_program(self.plan, self.wanted, feeds, body=self.body, pinned=frozenset(pins),
                                      shared=self._shared)
            if len(self._by_signature) >= _MAX_PROGRAMS:
                self._used_at.pop(self._by_signature.popitem(last=False)[0], None)
            self._by_signature[key] = program
            self._used_at[key] = self._lookups
        return program

    def run(self, feeds: list, into: list | None = None) -> list | None:
        """The wanted values (fresh arrays, or written into ``into``'s arrays), or None: not run."""
        if self.fast is None:
            return None
        return self.fast.run(feeds, into)

    def compiled(self) -> list:
        """The programs compiled so far (most recent last)."""
        return [p for p in self._by_signature.values() if not isinstance(p, NotCompiled)]

    def describe(self, feeds: Sequence[Any]) -> str:
        """The program of ``feeds``' signature as text (each node: vanished, fused, folded, a C
        instruction or NumPy), compiling it if needed; or why there is none."""
        with self._lock:
            program = self._compile(feeds)
        if isinstance(program, NotCompiled):
            return f"not compiled ({program.reason}): every node runs through the plan"
        return program.text


def _steady_feeds(program, plan: Plan, feeds: Sequence[Any]) -> tuple[int, ...]:
    """The read-only feeds of a body that keep their identity between iterations: the enclosing
    scope's values, and those the (unpinned) ``program`` returns as they are."""
    steady = set(range(len(plan.input_names), len(feeds)))
    if not isinstance(program, NotCompiled):
        steady.update(spec[3][1] for spec in program.outputs if spec[3] is not None and spec[3][0] == "feed")
    return tuple(sorted(k for k in steady if is_pinned(feeds[k])))
