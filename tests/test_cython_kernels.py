"""The Cython kernels (lstminfer._native._rnn_kernels*, lstminfer.kernels.cython_backend) against the reference.

Float32 parity: max |cython - reference| <= 1e-5 for outputs of order 1;
with unbounded activations (Relu, Affine, ...) values can grow, so there the
bound is relative to the output's magnitude. Every instruction-set build
this CPU can run is tested (the portable one always).
"""
from __future__ import annotations

import importlib
import os
import threading
import time

import numpy as np
import pytest

from lstminfer.kernels import cython_backend
from lstminfer.reference import SUPPORTED_ACTIVATIONS
from lstminfer.reference.activations import Activation

from kernel_cases import REFERENCE, make_inputs, make_spec, make_weights

pytestmark = pytest.mark.skipif(not cython_backend.available(), reason=str(cython_backend.unavailable_reason()))

TOL = 1e-5


def _runnable_isas() -> list[str]:
    from lstminfer._native._cpu import features

    have = features()
    return [name for name, needs in cython_backend._ISA_NEEDS.items() if all(have.get(f) for f in needs)]


ISAS = _runnable_isas()


def ext(isa):
    return importlib.import_module(cython_backend._ISA_MODULES[isa])


@pytest.fixture(params=ISAS)
def each_isa(request, monkeypatch):
    """Build kernels with this instruction-set build (the env var covers 'portable')."""
    monkeypatch.setattr(cython_backend, "isa", lambda: request.param)
    return request.param


# ------------------------------------------------------------ helpers --

def build(op, spec, inputs, threads=1):
    W, R, B = inputs[1:4]
    P = inputs[7] if op == "LSTM" else None
    kernel = cython_backend.cython_kernel(spec, W, R, B, P, threads=threads, label="node 'rnn0'")
    assert kernel is not None, cython_backend.why_not_fused(spec, W, R, B, P)
    return kernel


def expected_of(op, spec, inputs):
    return REFERENCE[op](*inputs, **spec.reference_kwargs())[: spec.num_outputs]


def assert_close(got, expected, relative=False):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32 and g.shape == e.shape
        bound = TOL * max(1.0, float(np.abs(e).max(initial=0))) if relative else TOL
        assert np.abs(g - e).max(initial=0) <= bound, (np.abs(g - e).max(), bound)


# ------------------------------------------------------- building blocks --

@pytest.mark.parametrize("isa", ISAS)
def test_fast_tanh_and_sigmoid_accuracy(isa):
    x = np.concatenate([np.linspace(-20, 20, 400_001, dtype=np.float32),
                        np.float32(10) ** np.linspace(-30, 1, 2001, dtype=np.float32)])
    x = np.concatenate([x, -x])
    tanh, sig = x.copy(), x.copy()
    ext(isa).apply_activation(tanh, "Tanh")
    ext(isa).apply_activation(sig, "Sigmoid")
    x64 = x.astype(np.float64)
    assert np.abs(tanh - np.tanh(x64)).max() < 4e-7
    assert np.abs(sig - 1 / (1 + np.exp(-x64))).max() < 3e-7
    assert np.abs(tanh).max() <= 1 and sig.min() >= 0 and sig.max() <= 1
    nan = np.full(20, np.nan, dtype=np.float32)
    ext(isa).apply_activation(nan, "Tanh")
    assert np.isnan(nan).all()
    relu = np.array([np.nan, -np.inf, -1, -0.0, 0, 2, np.inf], dtype=np.float32)
    ext(isa).apply_activation(relu, "Relu")  # as the reference (np.maximum): NaN stays NaN
    np.testing.assert_array_equal(relu, np.maximum(np.array([np.nan, -np.inf, -1, -0.0, 0, 2, np.inf], np.float32), 0))


@pytest.mark.parametrize("isa", ISAS)
def test_sigmoid_and_tanh_saturate_and_keep_nan(isa):
    """exp's argument clamp (min/max on AVX-512, selects elsewhere): infinities and huge values
    saturate, NaN stays NaN, for every lane position."""
    x = np.array([np.inf, -np.inf, 1e30, -1e30, 89.0, -88.0, np.nan, 0.0] * 5, dtype=np.float32)
    sig, tanh = x.copy(), x.copy()
    ext(isa).apply_activation(sig, "Sigmoid")
    ext(isa).apply_activation(tanh, "Tanh")
    finite = ~np.isnan(x)
    with np.errstate(over="ignore"):
        expected_sig = (1 / (1 + np.exp(-x.astype(np.float64))))[finite]
    assert np.abs(sig[finite] - expected_sig).max() <= 1e-7
    assert np.abs(tanh[finite] - np.tanh(x.astype(np.float64))[finite]).max() <= 1e-7
    assert np.isnan(sig[~finite]).all() and np.isnan(tanh[~finite]).all()


# H=87: every build runs the fused default-activation cells on whole groups of LI_U vectors,
# then single vectors (AVX-512: 64 + 16, AVX2: 64 + 16, portable: 80 + 4), then 7 units
# through the per-gate passes.
@pytest.mark.parametrize("op,extra", [("LSTM", {}), ("LSTM", {"clip": 0.8}), ("GRU", {}),
                                      ("GRU", {"linear_before_reset": 1, "clip": 1.5}),
                                      ("LSTM", {"input_forget": 1}),
                                      ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"]})])
@pytest.mark.parametrize("batch", [1, 6])
def test_fused_cells_and_their_tails_match_reference(each_isa, op, extra, batch):
    rng = np.random.default_rng(batch + len(extra))
    W, R, B, P = make_weights(rng, op, 1, 87, 12, scale=2.0)  # scale: gates past the clip
    spec = make_spec(op, **extra)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=30, batch=batch,
                         lens=np.array([30, 11, 0, 30, 1, 29][:batch], dtype=np.int32))
    assert_close(build(op, spec, inputs)(*inputs), expected_of(op, spec, inputs))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", SUPPORTED_ACTIVATIONS)
def test_every_activation_matches_reference(isa, name):
    x = np.linspace(-12, 12, 2401, dtype=np.float32)
    got = x.copy()
    ext(isa).apply_activation(got, name, 0.37, 1.3)
    expected = Activation(name, alpha=0.37, beta=1.3)(x)
    assert np.abs(got - expected).max() <= TOL * max(1, np.abs(expected).max())


def test_every_reference_activation_has_a_code():
    assert {n.lower() for n in SUPPORTED_ACTIVATIONS} == set(ext("portable").ACTIVATION_CODES)


def _panels(BT, width):
    K, N = BT.shape
    columns = -(-N // width) * width
    padded = np.zeros((K, columns), dtype=np.float32)
    padded[:, :N] = BT
    return np.ascontiguousarray(padded.reshape(K, columns // width, width).transpose(1, 0, 2).ravel())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,K,N,n0,n1", [(1, 7, 5, 0, 5), (3, 17, 37, 2, 37), (4, 1, 16, 0, 16),
                                         (5, 64, 19, 3, 11), (9, 3, 33, 0, 33), (70, 20, 67, 1, 66),
                                         (260, 33, 96, 0, 96), (2, 1, 40, 0, 40), (2, 33, 70, 5, 70),
                                         (6, 8, 64, 0, 64), (7, 65, 33, 0, 33), (3, 2, 1, 0, 1)])
def test_matmul_matches_numpy_and_writes_only_its_columns(isa, M, K, N, n0, n1):
    rng = np.random.default_rng(M * 100 + K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    BT = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    width = n1 - n0
    out = np.full((M, width + 6), 7.0, dtype=np.float32)
    module = ext(isa)
    panels = _panels(BT[:, n0:n1], module.PANEL_WIDTH)
    module.matmul(A, panels, n0, n1, out, bias)
    expected = A.astype(np.float64) @ BT[:, n0:n1].astype(np.float64) + bias[n0:n1]
    assert np.abs(out[:, :width] - expected).max() <= 1e-5 * max(1, np.abs(expected).max())
    assert (out[:, width:] == 7).all()


def test_pack_panels_layout():
    rng = np.random.default_rng(2)
    W, R, B, _ = make_weights(rng, "GRU", 2, 5, 3)
    kernel = cython_backend.cython_kernel(make_spec("GRU", direction="bidirectional"), W, R, B)
    width = kernel._ext.PANEL_WIDTH
    buffer, offsets = cython_backend.pack_panels(kernel._packed, width)
    assert offsets.shape == (2, 3) and not buffer.flags.writeable
    # direction 1, R^T's candidate columns (GRU's second range): R rows 2H..3H (h gate), transposed
    panel = buffer[offsets[1, 2]: offsets[1, 2] + 5 * width].reshape(5, width)
    np.testing.assert_array_equal(panel[:, :5], R[1, 10:15].T)
    assert (panel[:, 5:] == 0).all()


# -------------------------------------------------------------- parity --

@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("H,batch", [(1, 1), (64, 1), (64, 9), (17, 17), (1, 2), (40, 2), (17, 3), (33, 6),
                                     (64, 7)])
def test_shapes_batch_one_and_tiles(each_isa, op, H, batch):
    """Batch 1 (row kernel), 2-3 rows (one pass for them), multiples of 4 plus leftovers (tile
    kernel), H not a multiple of the panel."""
    rng = np.random.default_rng(H + batch)
    W, R, B, P = make_weights(rng, op, 1, H, 7)
    spec = make_spec(op, linear_before_reset=(op == "GRU" and H == 17))
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=9, batch=batch)
    assert_close(build(op, spec, inputs)(*inputs), expected_of(op, spec, inputs))


def test_isa_selection_and_portable_env(monkeypatch):
    """LSTMINFER_PORTABLE=1 forces the baseline build; without it, the best build this CPU runs."""
    rng = np.random.default_rng(5)
    W, R, B, P = make_weights(rng, "LSTM", 1, 40, 6)
    spec = make_spec("LSTM")
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=12, batch=6)
    monkeypatch.setenv("LSTMINFER_PORTABLE", "1")
    assert cython_backend.isa() == "portable"
    portable = build("LSTM", spec, inputs)
    assert "portable" in portable.describe and portable._ext.ISA == "portable"
    monkeypatch.delenv("LSTMINFER_PORTABLE")
    best = build("LSTM", spec, inputs)
    assert cython_backend.isa() == ISAS[0] and best._ext.ISA == ISAS[0] and ISAS[0] in best.describe
    expected = expected_of("LSTM", spec, inputs)
    assert_close(portable(*inputs), expected)
    assert_close(best(*inputs), expected)


# ------------------------------------------------------------- threads --
# (parity, fallbacks, errors and the batch split of every backend: tests/test_backend_parity.py)

@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_batch_split_runs_on_the_worker_threads(op, T, layout, threads, monkeypatch):
    rng = np.random.default_rng(31 + T + layout + threads)
    W, R, B, P = make_weights(rng, op, 2, 24, 7)
    spec = make_spec(op, direction="bidirectional", layout=layout)
    kernel = build(op, spec, make_inputs(rng, op, spec, W, R, B, P, T=T, batch=1), threads=threads)

    def python_path(*args):
        raise AssertionError("the split should run in C, not through the Python path")

    monkeypatch.setattr(kernel, "_slow", python_path)
    for batch, with_lens in ((4 * threads, False), (4 * threads + 3, True), (13 * threads, True)):
        lens = rng.integers(0, T + 1, batch).astype(np.int32) if with_lens else None
        inputs = make_inputs(rng, op, spec, W, R, B, P, T=T, batch=batch, lens=lens)
        for _ in range(2):  # the second call reuses the started workers and the scratch
            assert_close(kernel(*inputs), expected_of(op, spec, inputs))


@pytest.mark.parametrize("op,extra", [("LSTM", {}), ("LSTM", {"input_forget": 1, "clip": 0.9}),
                                      ("GRU", {"linear_before_reset": 1}), ("GRU", {}), ("RNN", {})])
def test_small_batches_split_the_hidden_units_across_threads(op, extra, each_isa, monkeypatch):
    """Below the batch split, threads take whole weight panels of hidden units each and meet
    after every step: the same answers, in C (no Python path)."""
    H = 4 * 2 * ext(each_isa).PANEL_WIDTH  # four panels per gate: two per part, or uneven with 3 threads
    rng = np.random.default_rng(34)
    W, R, B, P = make_weights(rng, op, 2, H, 9)
    for threads, layout in ((2, 0), (3, 1)):
        spec = make_spec(op, direction="bidirectional", layout=layout, **extra)
        kernel = build(op, spec, make_inputs(rng, op, spec, W, R, B, P, T=2, batch=1), threads=threads)

        def python_path(*args):
            raise AssertionError("the unit split should run in C")

        monkeypatch.setattr(kernel, "_slow", python_path)
        for batch, with_lens in ((1, False), (3, True)):
            lens = rng.integers(0, 7, batch).astype(np.int32) if with_lens else None
            inputs = make_inputs(rng, op, spec, W, R, B, P, T=6, batch=batch, lens=lens)
            for _ in range(2):
                assert_close(kernel(*inputs), expected_of(op, spec, inputs), relative=True)


@pytest.mark.parametrize("op,extra", [("LSTM", {}), ("LSTM", {"input_forget": 1, "clip": 0.9}), ("GRU", {}),
                                      ("GRU", {"linear_before_reset": 1}), ("RNN", {})])
def test_one_step_calls_alternate_the_product_order_with_the_same_bits(op, extra, each_isa):
    """One-step calls read R before W on every other call (flip_products): the same bits
    each call, and the reference's values, at odd sizes, both directions, batch 1 and 5 (the
    4-row tiles), sequence_lens, and the hidden units split across two threads."""
    width = ext(each_isa).PANEL_WIDTH
    rng = np.random.default_rng(35)
    for H, I, threads in ((1, 3, 1), (17, 5, 1), (40, 33, 1), (4 * width, 7, 2)):
        W, R, B, P = make_weights(rng, op, 1, H, I)
        for direction in ("forward", "reverse"):
            spec = make_spec(op, direction=direction, **extra)
            kernel = build(op, spec, make_inputs(rng, op, spec, W, R, B, P, T=1, batch=1), threads=threads)
            assert kernel.alternates_products
            kernel._slow = lambda *args: pytest.fail("the C entry declined plain inputs")
            for batch, lens in ((1, None), (3, np.array([1, 0, 1], np.int32)), (5, np.array([1, 0, 1, 1, 0], np.int32))):
                inputs = make_inputs(rng, op, spec, W, R, B, P, T=1, batch=batch, lens=lens)
                first = kernel(*inputs)
                for _ in range(2):
                    for a, b in zip(first, kernel(*inputs)):
                        np.testing.assert_array_equal(a, b)
                assert_close(first, expected_of(op, spec, inputs), relative=True)


def test_large_or_bidirectional_kernels_keep_one_product_order():
    rng = np.random.default_rng(36)
    for H, direction in ((256, "forward"), (8, "bidirectional")):  # W + R: 2 MiB; two directions
        W, R, B, P = make_weights(rng, "LSTM", 2 if direction == "bidirectional" else 1, H, H)
        spec = make_spec("LSTM", direction=direction)
        assert not build("LSTM", spec, make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=1)).alternates_products


def test_unit_split_is_right_when_the_cores_are_oversubscribed():
    """More threads than cores (and a busy process beside them): parts get descheduled, and
    their blocks are taken over mid-sequence; the answers must not change."""
    import multiprocessing

    rng = np.random.default_rng(35)
    H = 4 * ext(cython_backend.isa()).PANEL_WIDTH
    W, R, B, P = make_weights(rng, "LSTM", 2, H, 5)
    spec = make_spec("LSTM", direction="bidirectional")
    kernel = build("LSTM", spec, make_inputs(rng, "LSTM", spec, W, R, B, P, T=2, batch=1), threads=4)
    busy = multiprocessing.get_context("fork").Process(target=_spin, args=(3.0,))
    busy.start()
    try:
        for batch in (1, 2, 3):
            inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=40, batch=batch)
            expected = expected_of("LSTM", spec, inputs)
            for _ in range(5):
                assert_close(kernel(*inputs), expected, relative=True)
    finally:
        busy.terminate()
        busy.join()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
@pytest.mark.parametrize("T", [1, 5])
def test_batch_split_is_right_when_its_workers_share_the_callers_core(T):
    """The kernel's worker threads pinned to the caller's core: a worker rarely starts its
    part before the caller finished its own, so the caller takes the parts back and runs them
    (li_worker_wait), or a worker preempted mid-part finishes it later; the answers must not
    change, over many calls (a part run twice or never would show)."""
    rng = np.random.default_rng(44)
    W, R, B, P = make_weights(rng, "LSTM", 1, 32, 9)
    spec = make_spec("LSTM")
    kernel = build("LSTM", spec, make_inputs(rng, "LSTM", spec, W, R, B, P, T=T, batch=12), threads=3)
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # the workers start at the first split call and inherit it
    try:
        for _ in range(30):
            inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=T, batch=12)
            assert_close(kernel(*inputs), expected_of("LSTM", spec, inputs), relative=True)
    finally:
        os.sched_setaffinity(0, cores)


def _spin(seconds):
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _in_threads(target, count):
    """target(0) .. target(count - 1), each in a Python thread of its own, all at once; returns when all end."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_split_kernel_from_several_threads_at_once():
    """Python threads sharing one threads=2 kernel: one call holds the workers, the others run serially."""
    rng = np.random.default_rng(32)
    W, R, B, P = make_weights(rng, "LSTM", 1, 32, 8)
    spec = make_spec("LSTM")
    kernel = cython_backend.cython_kernel(spec, W, R, B, P, threads=2)
    jobs = [make_inputs(rng, "LSTM", spec, W, R, B, P, T=3 + k, batch=8 + k) for k in range(6)]
    expected = [expected_of("LSTM", spec, job) for job in jobs]
    failures = []

    def worker(offset):
        for repeat in range(15):
            k = (offset + repeat) % len(jobs)
            try:
                assert_close(kernel(*jobs[k]), expected[k])
            except AssertionError as e:
                failures.append((k, str(e)))

    _in_threads(worker, 3)
    assert not failures


def _native_threads() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_threaded_kernels_share_the_process_worker_threads():
    """The layers of a model, each a threads=2 kernel, run on the same worker thread: a worker
    per kernel would leave one polling beside the next kernel's (more threads than cores)."""
    rng = np.random.default_rng(45)
    kernels, jobs = [], []
    H = ext(cython_backend.isa()).UNIT_SPLIT_MIN_H  # at batch 1 a unit split, at 12 rows a batch split
    for k, (op, batch) in enumerate((("LSTM", 1), ("GRU", 12), ("LSTM", 12), ("RNN", 1))):
        W, R, B, P = make_weights(rng, op, 1, H, 5 + k)
        spec = make_spec(op)
        kernels.append(cython_backend.cython_kernel(spec, W, R, B, P, threads=2))
        jobs.append((op, spec, make_inputs(rng, op, spec, W, R, B, P, T=3, batch=batch)))
    before = _native_threads()
    for _ in range(3):
        for kernel, (op, spec, inputs) in zip(kernels, jobs):
            assert_close(kernel(*inputs), expected_of(op, spec, inputs), relative=True)
    assert _native_threads() - before <= 1, "each threaded kernel started threads of its own"


def test_threaded_kernels_from_several_threads_keep_their_bits():
    """Two threads=2 kernels (a hidden-unit split and a batch split) called from four Python
    threads: one call holds the process's workers, the others run their parts in their own
    thread; every call gives the bits of the kernel called alone."""
    rng = np.random.default_rng(46)
    H = ext(cython_backend.isa()).UNIT_SPLIT_MIN_H
    cases = []
    for op, batch in (("LSTM", 1), ("GRU", 12)):
        W, R, B, P = make_weights(rng, op, 1, H, 6)
        spec = make_spec(op)
        kernel = cython_backend.cython_kernel(spec, W, R, B, P, threads=2)
        inputs = make_inputs(rng, op, spec, W, R, B, P, T=4, batch=batch)
        cases.append((kernel, inputs, kernel(*inputs)))
    failures = []

    def caller(offset):
        for repeat in range(40):
            kernel, inputs, alone = cases[(offset + repeat) % 2]
            if not all(np.array_equal(g, a) for g, a in zip(kernel(*inputs), alone)):
                failures.append(offset)

    _in_threads(caller, 4)
    assert not failures


def test_split_kernel_works_in_a_forked_child():
    """A fork copies the process's worker pool but not its threads: the child starts its own."""
    import multiprocessing

    rng = np.random.default_rng(33)
    W, R, B, P = make_weights(rng, "GRU", 1, 16, 4)
    spec = make_spec("GRU")
    kernel = cython_backend.cython_kernel(spec, W, R, B, P, threads=2)
    inputs = make_inputs(rng, "GRU", spec, W, R, B, P, T=2, batch=12)
    expected = kernel(*inputs)  # starts the parent's workers
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=lambda: results.put([a.tolist() for a in kernel(*inputs)]))
    child.start()
    got = results.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g, np.float32), e, rtol=0, atol=TOL)


def test_one_kernel_from_several_threads_at_once():
    rng = np.random.default_rng(4)
    W, R, B, P = make_weights(rng, "LSTM", 1, 48, 8)
    spec = make_spec("LSTM")
    kernel = cython_backend.cython_kernel(spec, W, R, B, P)
    jobs = [make_inputs(rng, "LSTM", spec, W, R, B, P, T=30 + k, batch=1 + k % 5) for k in range(8)]
    # The same kernel run alone gives the expected bits (it is deterministic); parity with
    # the reference is the other tests' business.
    expected = [kernel(*job) for job in jobs]
    failures = []
    barrier = threading.Barrier(4)

    def worker(offset):
        barrier.wait()
        for repeat in range(10):
            k = (offset + repeat) % len(jobs)
            got = kernel(*jobs[k])
            if max(float(np.abs(g - e).max()) for g, e in zip(got, expected[k])) > TOL:
                failures.append(k)

    _in_threads(worker, 4)
    assert not failures


def _long_call():
    rng = np.random.default_rng(6)
    W, R, B, P = make_weights(rng, "LSTM", 1, 128, 128)
    spec = make_spec("LSTM")
    kernel = cython_backend.cython_kernel(spec, W, R, B, P)
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=400, batch=8)
    kernel(*inputs)
    return lambda: kernel(*inputs)


def test_the_gil_is_released_during_a_call():
    """While a long call runs in another thread, this thread keeps running Python."""
    call = _long_call()
    start = time.perf_counter()
    call()
    alone = time.perf_counter() - start
    done = threading.Event()
    worker = threading.Thread(target=lambda: (call(), call(), call(), done.set()))
    ticks = 0
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks += 1
    worker.join()
    elapsed = time.perf_counter() - start
    # With the GIL held for 3 calls, this loop would get only the interpreter's switch
    # intervals around them; released, it runs for most of the calls' wall time.
    assert elapsed >= 2 * alone and ticks > 1000, (ticks, elapsed, alone)


# Two threads running two calls on two cores (wall time < 2x one call) is measured in
# benchmarks/bench_cython.py: on a shared 2-core box a pass/fail bound on it is flaky.


# ------------------------------------------------------ fast call path --

@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layout", [0, 1])
def test_fast_path_and_python_path_agree(op, layout):
    """The C entry (packed constants by identity, exact arrays) and the Python path
    (equal weight copies, strided states, int64 lens) give the same bits."""
    rng = np.random.default_rng(7)
    W, R, B, P = make_weights(rng, op, 2, 7, 5)
    spec = make_spec(op, direction="bidirectional", layout=layout)
    lens = np.array([3, 0, 5], dtype=np.int32)
    inputs = make_inputs(rng, op, spec, W, R, B, P, T=5, batch=3, lens=lens)
    kernel = build(op, spec, inputs)
    kernel._slow = lambda *args: pytest.fail("the C entry declined plain inputs")
    fast = kernel(*inputs)
    del kernel._slow
    other = list(inputs)
    other[1:4] = [W.copy(), R.copy(), B.copy()]  # equal, not identical: the Python path
    other[4] = lens.astype(np.int64)
    other[5] = np.repeat(inputs[5], 2, axis=2)[:, :, ::2]  # same values, strided along H
    slow = kernel(*other)
    assert len(fast) == len(slow) == spec.num_outputs
    for f, s in zip(fast, slow):
        assert f.dtype == np.float32 and f.flags.c_contiguous
        np.testing.assert_array_equal(f, s)
    assert_close(fast, expected_of(op, spec, inputs))


@pytest.mark.parametrize("precision", ["float32", "int8", "vnni", "bf16"])
def test_weight_panels_start_on_a_cache_line(precision):
    """np.concatenate leaves buffers 16-48 bytes into a line; the kernels' panels must start on one."""
    from lstminfer.kernels.packing import concatenate_aligned
    from lstminfer.quantization import int8_per_row

    for size in (1, 3, 17, 100):
        pieces = [np.arange(size, dtype=np.float32), np.ones(5, np.float32)]
        joined = concatenate_aligned(pieces)
        assert joined.ctypes.data % 64 == 0
        np.testing.assert_array_equal(joined, np.concatenate(pieces))
    rng = np.random.default_rng(3)
    spec = make_spec("LSTM", hidden_size=40)
    W, R, B, P = make_weights(rng, "LSTM", 1, 40, 40)
    if precision == "float32":
        kernel, panels = cython_backend.cython_kernel(spec, W, R, B, P), "_panels"
    elif precision == "bf16":
        kernel, panels = cython_backend.cython_bf16_kernel(spec, W, R, B, P), "_qpanels"
    else:
        if precision == "vnni" and not cython_backend.vnni_available():
            pytest.skip("no AVX-512 VNNI on this CPU")
        quantized = (*int8_per_row(W), *int8_per_row(R))
        scheme = "vnni" if precision == "vnni" else "weight-only"
        kernel, panels = cython_backend.cython_int8_kernel(spec, W, R, B, P, quantized, scheme=scheme), "_qpanels"
    buffer = getattr(kernel, panels)
    assert buffer.ctypes.data % 64 == 0 and not buffer.flags.writeable


# ------------------------------------------------- batch 1, small H --

@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_small_batch_one_step_matches_reference_and_is_taken(each_isa, op, direction, layout):
    """Batch-1 steps of a small H (up to 3 vectors of units per gate) run products and cells in
    registers (li_lstm_step1_small, li_gru_lbr_step1_small; AVX-512): the reference's values for
    each H they take, sequences and single steps, clip, LSTM peepholes or none, absent states,
    sequence_lens ending the row early (its later steps take the general path); a counter proves
    the path ran, and that it did not where it declines (H past it or not whole vectors, LSTM
    input_forget, GRU without linear_before_reset, other activations, another build)."""
    small = ext(each_isa).SMALL_STEP
    vec = ext(each_isa).PANEL_WIDTH // 2
    lbr = {"linear_before_reset": 1} if op == "GRU" else {}
    rng = np.random.default_rng(47)
    for H, I, T, extra, peep, states, lens in (
            (vec, 1, 7, {}, True, True, None), (2 * vec, 2, 1, {}, False, True, None),
            (3 * vec, 17, 9, {"clip": 0.7}, True, False, [4]), (3 * vec, 40, 6, {}, True, True, [0]),
            (2 * vec, 3, 5, {}, False, True, [5])):
        W, R, B, P = make_weights(rng, op, 2 if direction == "bidirectional" else 1, H, I, with_peepholes=peep)
        spec = make_spec(op, direction=direction, layout=layout, **lbr, **extra)
        inputs = make_inputs(rng, op, spec, W, R, B, P, T=T, batch=1,
                             lens=None if lens is None else np.array(lens, np.int32), with_h0=states, with_c0=states)
        kernel = build(op, spec, inputs)
        kernel._slow = lambda *args: pytest.fail("the C entry declined plain inputs")
        before = ext(each_isa).small_steps_run()
        got = kernel(*inputs)
        taken = small and (lens is None or lens[0] > 0)
        assert ext(each_isa).small_steps_run() - before == (spec.num_directions if taken else 0)
        assert_close(got, expected_of(op, spec, inputs))
    declined = [(4 * vec, lbr), (vec + 1, lbr)]
    declined += ([(vec, {"input_forget": 1}), (vec, {"activations": ["Sigmoid", "Tanh", "Relu"]})] if op == "LSTM"
                 else [(vec, {}), (vec, {**lbr, "activations": ["Sigmoid", "Relu"]})])
    for H, extra in declined:
        W, R, B, P = make_weights(rng, op, 1, H, 3)
        spec = make_spec(op, **extra)
        inputs = make_inputs(rng, op, spec, W, R, B, P, T=4, batch=1)
        before = ext(each_isa).small_steps_run()
        got = build(op, spec, inputs)(*inputs)
        assert ext(each_isa).small_steps_run() == before, f"{op} H={H} {extra} took the small step"
        assert_close(got, expected_of(op, spec, inputs), relative=True)


# ------------------------------------------------------ fused one step --

def _fused_steps(isa):
    return ext(isa).fused_steps_run()


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_fused_one_step_matches_reference_and_is_taken(each_isa, direction, layout):
    """One-step LSTM calls at 4+ rows run as one fused pass on AVX-512 (lstm_step_fused): the
    reference's values at batches around the 4-row tiles, odd input sizes, clip, peepholes or
    none, absent states, sequence_lens ending rows before the step, threads 1 and 2 (each
    thread's rows fused); the counter proves the path ran, and on other builds that it did not."""
    fused = ext(each_isa).FUSED_STEP
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(41)
    for H, I, batch, threads, extra, peep, states in (
            (vec, 1, 4, 1, {}, True, True), (3 * vec, 17, 5, 1, {"clip": 0.7}, False, True),
            (2 * vec, 64, 7, 2, {}, True, False), (4 * vec, 33, 9, 2, {"clip": 2.5}, True, True),
            (64, 64, 64, 2, {}, True, True), (vec, 5, 17, 1, {}, True, False)):
        W, R, B, P = make_weights(rng, "LSTM", 2 if direction == "bidirectional" else 1, H, I, with_peepholes=peep)
        spec = make_spec("LSTM", direction=direction, layout=layout, **extra)
        for lens in (None, (np.arange(batch) % 3 != 1).astype(np.int32)):
            inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=batch, lens=lens,
                                 with_h0=states, with_c0=states)
            kernel = build("LSTM", spec, inputs, threads=threads)
            kernel._slow = lambda *args: pytest.fail("the C entry declined plain inputs")
            before = _fused_steps(each_isa)
            got = kernel(*inputs)
            parts = threads if batch >= 4 * threads else 1  # the batch split's parts, each fused
            assert _fused_steps(each_isa) - before == (parts if fused else 0)
            assert_close(got, expected_of("LSTM", spec, inputs))


def test_fused_one_step_saturates_and_keeps_nan(each_isa):
    """The fused cells' own exp/sigmoid/tanh at saturating gates (|x| up to ~1e4, past exp's
    clamp) and NaN inputs: the reference's values, NaN only in the rows that had one."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(45)
    W, R, B, P = make_weights(rng, "LSTM", 1, 2 * vec, 6)
    spec = make_spec("LSTM")
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=8)
    inputs[0] = inputs[0] * np.float32(1e4)
    inputs[0][0, 3, 2] = np.nan
    kernel = build("LSTM", spec, inputs)
    before = _fused_steps(each_isa)
    got = kernel(*inputs)
    assert _fused_steps(each_isa) - before == int(ext(each_isa).FUSED_STEP)
    expected = expected_of("LSTM", spec, inputs)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
        assert np.isnan(g[..., 3, :]).all() and not np.isnan(np.delete(g, 3, axis=-2)).any()
    assert_close([np.nan_to_num(g) for g in got], [np.nan_to_num(e) for e in expected], relative=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", [0, 1])
def test_fused_one_step_fast_and_python_paths_agree(each_isa, layout, threads):
    """The Python path (equal weight copies, int64 lens; with threads=2 its own batch split
    into strided Y/state views) fuses the step too: the same bits as the C entry."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(46)
    W, R, B, P = make_weights(rng, "LSTM", 2, 2 * vec, 5)
    spec = make_spec("LSTM", direction="bidirectional", layout=layout)
    lens = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=np.int32)
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=9, lens=lens)
    kernel = build("LSTM", spec, inputs, threads=threads)
    fast = kernel(*inputs)
    other = list(inputs)
    other[1:4] = [W.copy(), R.copy(), B.copy()]
    other[4] = lens.astype(np.int64)
    before = _fused_steps(each_isa)
    slow = kernel(*other)
    assert (_fused_steps(each_isa) > before) == ext(each_isa).FUSED_STEP
    for f, s in zip(fast, slow):
        np.testing.assert_array_equal(f, s)
    assert_close(fast, expected_of("LSTM", spec, inputs))


def test_fused_one_step_declines_what_it_does_not_claim(each_isa):
    """Batches under 4 rows, more than one step, hidden sizes not whole vectors, input_forget,
    other activations, a hidden-unit split and weights over FUSED_STEP_MAX_BYTES run the
    general path (the counter stays)."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(42)
    cases = [(vec, 3, 1, {}, 1), (vec, 8, 2, {}, 1), (vec + 1, 8, 1, {}, 1), (vec, 8, 1, {"input_forget": 1}, 1),
             (vec, 8, 1, {"activations": ["HardSigmoid", "Tanh", "Tanh"]}, 1),
             (max(128, 4 * vec), 5, 1, {}, 2),  # 5 rows < 4 x 2 threads: the units are split
             (256, 8, 1, {}, 1)]  # W + R: 4 * 256 * (9 + 256) floats > 1 MiB
    for H, batch, T, extra, threads in cases:
        W, R, B, P = make_weights(rng, "LSTM", 1, H, 9)
        spec = make_spec("LSTM", **extra)
        inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=T, batch=batch)
        kernel = build("LSTM", spec, inputs, threads=threads)
        before = _fused_steps(each_isa)
        got = kernel(*inputs)
        assert _fused_steps(each_isa) == before, (H, batch, T, extra)
        assert 4 * 256 * (9 + 256) * 4 > ext(each_isa).FUSED_STEP_MAX_BYTES
        assert_close(got, expected_of("LSTM", spec, inputs))


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_steps_in_place_keep_parity_over_a_long_stream(each_isa, threads):
    """run_into (StreamPool.step's call: the states are h0/c0 and receive Y_h/Y_c in place)
    for 200 one-step calls equals the reference over the whole sequence: the fused cells'
    maths (reciprocal, one tanh form) does not drift."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(43)
    H, I, batch, T = 2 * vec, 19, 10, 200
    W, R, B, P = make_weights(rng, "LSTM", 1, H, I)
    spec = make_spec("LSTM")
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=T, batch=batch)
    kernel = build("LSTM", spec, inputs, threads=threads)
    X, h, c = inputs[0], inputs[5].copy(), inputs[6].copy()
    before = _fused_steps(each_isa)
    ys = [kernel.run_into(np.ascontiguousarray(X[t:t + 1]), h, c) for t in range(T)]
    assert (_fused_steps(each_isa) - before > 0) == ext(each_isa).FUSED_STEP
    Y, Y_h, Y_c = expected_of("LSTM", spec, inputs)
    assert_close((np.concatenate(ys), h), (Y, Y_h))
    assert_close((c,), (Y_c,), relative=True)  # c grows to ~100 over the steps here


@pytest.mark.parametrize("threads", [1, 2])
def test_run_into_then_and_out(each_isa, threads):
    """run_into(..., then, out): then(Y) is returned instead of Y (with threads=2 it runs while
    the workers compute, so it gets Y before its values: here it only keeps it); a fitting
    ``out`` is written as Y, anything else (shape, dtype, layout, read-only) leaves Y fresh."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(47)
    H, I, batch = 2 * vec, 11, 64
    W, R, B, P = make_weights(rng, "LSTM", 1, H, I)
    spec = make_spec("LSTM")
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=batch)
    kernel = build("LSTM", spec, inputs, threads=threads)
    expected = expected_of("LSTM", spec, inputs)
    X = inputs[0]
    seen = []

    def then(y):
        seen.append(y)
        return "rows"

    for out in (None, np.empty((1, 1, batch, H), np.float32), np.empty((1, 1, batch, H), np.float64),
                np.empty((1, 1, batch, H + 1), np.float32), np.empty((1, 1, H, batch), np.float32).transpose(0, 1, 3, 2)):
        h, c = inputs[5].copy(), inputs[6].copy()
        assert kernel.run_into(X, h, c, then, out) == "rows"
        y = seen.pop()
        fits = out is not None and out.dtype == np.float32 and out.shape == y.shape and out.flags.c_contiguous
        assert (y is out) == fits
        assert_close((y, h, c), expected)
    read_only = np.empty((1, 1, batch, H), np.float32)
    read_only.flags.writeable = False
    h, c = inputs[5].copy(), inputs[6].copy()
    assert kernel.run_into(X, h, c, None, read_only) is not read_only


@pytest.mark.parametrize("threads", [1, 2])
def test_run_into_then_raising_finishes_the_step_first(each_isa, threads):
    """An error in ``then`` reaches the caller once the step is done (the workers never keep
    writing into states the caller has moved on from), and the kernel runs on as before."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(48)
    H, I, batch = vec, 5, 32
    W, R, B, P = make_weights(rng, "LSTM", 1, H, I)
    spec = make_spec("LSTM")
    inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=batch)
    kernel = build("LSTM", spec, inputs, threads=threads)
    expected = expected_of("LSTM", spec, inputs)

    def then(y):
        raise KeyError("then failed")

    h, c = inputs[5].copy(), inputs[6].copy()
    with pytest.raises(KeyError, match="then failed"):
        kernel.run_into(inputs[0], h, c, then)
    assert_close((h, c), expected[1:])  # the step ran to the end
    h, c = inputs[5].copy(), inputs[6].copy()
    y = kernel.run_into(inputs[0], h, c)
    assert_close((y, h, c), expected)


def test_batch_split_steals_groups_from_a_busy_caller(each_isa):
    """threads=2, one-step LSTM: the caller takes its share only after ``then`` returns, so the
    worker takes groups from the caller's range as well; the result is the reference's, the
    same with a caller that is late by a little or by far."""
    vec = ext(each_isa).PANEL_WIDTH // 2
    rng = np.random.default_rng(49)
    for H, I, batch, direction in ((vec, 7, 64, "forward"), (2 * vec, 3, 13, "bidirectional")):
        W, R, B, P = make_weights(rng, "LSTM", 2 if direction == "bidirectional" else 1, H, I)
        spec = make_spec("LSTM", direction=direction)
        inputs = make_inputs(rng, "LSTM", spec, W, R, B, P, T=1, batch=batch)
        kernel = build("LSTM", spec, inputs, threads=2)
        expected = expected_of("LSTM", spec, inputs)
        for delay in (0.0, 0.0005, 0.02):
            h, c = inputs[5].copy(), inputs[6].copy()
            y = kernel.run_into(inputs[0], h, c, lambda y: (time.sleep(delay), y)[1])
            assert_close((y, h, c), expected)
