"""Folding an Embedding into the input projections of the recurrent node it feeds.

A text model looks each token up in a table E [V, F] (ONNX ``Gather``) and hands the rows to an
LSTM/GRU/RNN, whose first work at every step is the product of that row with W (plus the input
bias). Both are constant, so ``P = E W^T + b`` [V, D, gates*H] is computed once, by the kernel's
own products (``KernelCore.input_projections``), and each step copies a row of P by its token id
instead: a ``Gather`` of F floats and F * gates * H multiply-adds per token become one row copy.

The compiler calls ``fold`` from its recurrent lowering. The fold applies when the node's X is the
Gather's output seen through views only (Transpose, Reshape, ... that vanished), nothing else
reads that output (shape-only reads aside), the table is a float32 constant, and P stays within
``MAX_TABLE_BYTES``; the Gather's instruction is then dropped, and the node's call is given the
ids (with the strides of X's rows among them) and P.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .c_runtime import _runtime

MAX_TABLE_BYTES = 32 << 20  # P above this (a large vocabulary times 4H): the Gather and W's product stay
_F32 = np.dtype(np.float32)


@dataclass
class PendingGather:
    """A Gather the compiler lowered to ``GatherRows`` that a recurrent node might absorb."""

    index: int  # of the step in the compiler's schedule
    instruction: int  # of its GatherRows in the compiler's instructions
    table: np.ndarray  # the constant [V, F]
    ids_ref: tuple[int, int]
    ids: np.ndarray  # the traced ids, C-contiguous (as the instruction reads them)
    out_slot: int
    out: np.ndarray  # the traced output [*ids.shape, F], C-contiguous in the program's memory


def candidate(step, table: Any, ids_ref, ids: np.ndarray, instruction: int, index: int,
              out: np.ndarray) -> PendingGather | None:
    """The record of a lowered Gather whose table could be folded (a float32 [V, F] constant), else None."""
    if not (isinstance(table, np.ndarray) and table.dtype == _F32 and table.ndim == 2 and table.shape[0] >= 1
            and not table.flags.writeable and out.flags.c_contiguous):
        return None
    return PendingGather(index, instruction, table, ids_ref, ids, step.outputs[0], out)


def fold(compiler, step, index: int, kernel, X: np.ndarray, time_major: bool, T: int, B: int):
    """(ids ref, ``Recurrent``'s lookup argument, the Gather's record) when the recurrent node of
    schedule step ``index`` takes its projections from a folded Gather, else None."""
    if not getattr(kernel, "looks_up_projections", False):
        return None
    gather = _source_gather(compiler, X)
    if gather is None or not _only_reader(compiler, gather.out_slot, index, step.inputs[0]):
        return None
    rows = _id_strides(gather, X, time_major, T, B)
    if rows is None:
        return None
    first, ids_t, ids_b = rows
    _, D, H, _ = kernel.call_sizes
    gates, V = kernel.call_gates, gather.table.shape[0]
    if V * D * gates * H * 4 > MAX_TABLE_BYTES:
        return None
    table = _projections(compiler.shared, kernel, gather.table)
    compiler.keep.append(table)
    table_ref = (_runtime.BASE_ABSOLUTE, table.__array_interface__["data"][0])
    ids_ref = (gather.ids_ref[0], gather.ids_ref[1] + first * gather.ids.itemsize)
    return ids_ref, (table_ref, V, D * gates * H, gather.ids.itemsize, (ids_t, ids_b)), gather


def _source_gather(compiler, X: np.ndarray) -> PendingGather | None:
    """The pending Gather whose output X is a view of."""
    lo = X.__array_interface__["data"][0]
    for gather in compiler.gathers.values():
        start = gather.out.__array_interface__["data"][0]
        if start <= lo < start + gather.out.nbytes and np.shares_memory(X, gather.out):
            return gather
    return None


def _only_reader(compiler, slot: int, index: int, x_slot: int, depth: int = 0) -> bool:
    """Whether ``slot`` reaches nothing but input 0 (X) of schedule step ``index``, through views
    that vanished and reads of its shape alone (``compiler.reader_kind``): else the embedding
    itself is needed."""
    if slot in compiler.wanted or depth > 32:
        return False
    for j in compiler.readers.get(slot, []):
        reader = compiler.schedule[j]
        reads = list(reader.inputs) + list(reader.outer)
        if j == index:
            if [k for k, s in enumerate(reads) if s == slot] != [0] or slot != x_slot:
                return False
            continue
        kind = compiler.reader_kind(j)
        if kind == "shape":
            continue
        if kind != "view" or j > index:
            return False
        if not all(_only_reader(compiler, out, index, x_slot, depth + 1) for out in reader.outputs if out >= 0):
            return False
    return True


def _id_strides(gather: PendingGather, X: np.ndarray, time_major: bool, T: int, B: int):
    """(first id, id strides of X's time and batch axes) when every row of X is one whole row of
    the Gather's output, else None."""
    F = gather.table.shape[1]
    row = F * 4
    if X.shape[2] != F or (F > 1 and X.strides[2] != 4):
        return None
    offset = X.__array_interface__["data"][0] - gather.out.__array_interface__["data"][0]
    t_axis, b_axis = (0, 1) if time_major else (1, 0)
    strides = []
    for axis, n in ((t_axis, T), (b_axis, B)):
        s = X.strides[axis] if n > 1 else 0
        if s < 0 or s % row:
            return None
        strides.append(s // row)
    if offset < 0 or offset % row:
        return None
    first = offset // row
    if first + (T - 1) * strides[0] + (B - 1) * strides[1] >= gather.ids.size:
        return None
    return first, strides[0], strides[1]


def _projections(shared: dict, kernel, table: np.ndarray) -> np.ndarray:
    """P [V, D * gates * H] for this kernel and embedding table, made once per plan (``shared``)."""
    key = ("embedding_fold", id(kernel), id(table))
    hit = shared.get(key)
    if hit is None:
        projected = kernel.input_projections(np.ascontiguousarray(table))
        projected = projected.reshape(projected.shape[0], -1)
        projected.setflags(write=False)
        hit = shared[key] = (kernel, table, projected)  # kernel, table: their ids stay theirs
    return hit[2]
