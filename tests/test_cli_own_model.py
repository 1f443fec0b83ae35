"""The command line on the user's own model: demo, quantize --report, bench, compile, run, exit codes.

Models are PyTorch exports made at test time (``torch_models``) and the bundled ones.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from lstminfer import backends, models
from lstminfer.cli import main

torch_models = pytest.importorskip("torch_models", reason="needs torch to export test models")

try:
    import onnxruntime  # noqa: F401
    HAS_ORT = True
except ImportError:
    HAS_ORT = False

TINY = ["--duration", "0.005", "--seq-len", "8", "--pool", "3"]  # bench: a fraction of a second in all


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> path of small PyTorch exports: a streaming LSTM (h0/c0 in, h_n/c_n out), a token classifier
    (Embedding + LSTM, a last-step head: it streams), a bidirectional GRU."""
    folder = tmp_path_factory.mktemp("own_models")
    specs = {
        "lstm": torch_models.RecurrentSpec("LSTM", num_layers=2, state_io=True, batch_first=True),
        "classifier": torch_models.ClassifierSpec(),
        "bigru": torch_models.RecurrentSpec("GRU", bidirectional=True),
        "gru": torch_models.RecurrentSpec("GRU"),  # streams, but has no state inputs
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(torch_models.export(spec, "torchscript", 17))
    paths["specs"] = specs
    return paths


# -- demo --------------------------------------------------------------------------------
def test_demo_checks_a_streaming_model_against_onnxruntime_and_in_chunks(exported, capsys):
    assert main(["demo", "--model", str(exported["lstm"])]) == 0
    out = capsys.readouterr().out
    assert "generated inputs (seed 0): x float32 [1, 16, 5], h0 float32 [2, 1, 8], c0 float32 [2, 1, 8]" in out
    assert "streaming 16 steps in chunks of 1, 2, 3, 4, 5, 1 through model.stream(): " \
           "streamed == whole-sequence: yes" in out
    if HAS_ORT:
        assert "onnxruntime vs lstminfer, 3 output(s): max abs diff " in out
        assert ": pass (every value within 1e-05 + 1e-05 x |onnxruntime value|; the worst at " in out
        assert "ms per run (median)" in out.split("onnxruntime ")[1]
    else:
        assert "onnxruntime: not installed" in out
    assert "all checks passed" in out and "FAIL" not in out


def test_demo_on_models_that_do_not_stream_says_why_and_passes(exported, capsys):
    assert main(["demo", "--model", str(exported["bigru"]), "--seq-len", "9"]) == 0
    out = capsys.readouterr().out
    assert "x float32 [9, 1, 5]" in out  # time-major: T first, batch 1
    assert "streaming: not streamable" in out and "bidirectional" in out and "all checks passed" in out


def test_demo_exits_1_when_onnxruntime_disagrees(exported, capsys, monkeypatch):
    from lstminfer import model_check

    class Shifted:  # an "onnxruntime" whose outputs are off by 1e-3
        def __init__(self, path):
            import lstminfer
            self.model = lstminfer.load(path, backend="reference")

        def run(self, names, feeds):
            return [v + np.float32(1e-3) for v in self.model.run(names, feeds)]

        def get_outputs(self):
            return self.model.get_outputs()

    monkeypatch.setattr(model_check, "onnxruntime_session", lambda path, threads=1: (Shifted(path), "fake"))
    assert main(["demo", "--model", str(exported["lstm"])]) == 1
    out = capsys.readouterr().out
    assert "max abs diff 1.0e-03: FAIL (values outside 1e-05 + 1e-05 x |onnxruntime value|, up to " in out
    assert "FAILED" in out and "lstminfer and onnxruntime differ by 0.001" in out


def test_demo_exits_1_when_streaming_disagrees(exported, capsys, monkeypatch):
    from lstminfer import streaming

    real_step = streaming.Stream.step
    monkeypatch.setattr(streaming.Stream, "step", lambda self, x: real_step(self, x) * 2)
    assert main(["demo", "--model", str(exported["lstm"])]) == 1
    out = capsys.readouterr().out
    assert "streamed == whole-sequence: NO" in out and "streamed outputs differ" in out


def test_generated_inputs_index_the_embedding_and_fill_sequence_lens(exported, tmp_path):
    import lstminfer
    from lstminfer.sample_inputs import sample_feeds

    spec = exported["specs"]["classifier"]
    feeds = sample_feeds(lstminfer.load(exported["classifier"]), time=50, batch=2, seed=3)
    assert feeds["tokens"].dtype == np.int64 and feeds["tokens"].shape == (2, 50)
    assert feeds["tokens"].max() < spec.vocab and feeds["tokens"].max() >= 4  # the whole vocabulary, not 0..3

    rng = np.random.default_rng(0)
    node = oh.make_node("GRU", ["X", "W", "R", "", "lens"], ["Y"], hidden_size=2)
    graph = oh.make_graph(
        [node], "g", [oh.make_tensor_value_info("X", TP.FLOAT, ["T", "batch", 3]),
                      oh.make_tensor_value_info("lens", TP.INT32, ["batch"])],
        [oh.make_tensor_value_info("Y", TP.FLOAT, None)],
        [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
         for n, s in (("W", (1, 6, 3)), ("R", (1, 6, 2)))])
    path = tmp_path / "lens.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14)]), path)
    feeds = sample_feeds(lstminfer.load(path), time=7, batch=3)
    assert feeds["X"].shape == (7, 3, 3) and feeds["lens"].tolist() == [7, 7, 7]


def test_demo_shows_the_range_of_generated_token_ids(exported, capsys):
    assert main(["demo", "--model", str(exported["classifier"]), "--seq-len", "200"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "generated inputs (seed" in line)
    assert "tokens int64 [1, 200] in 0.." in line
    assert int(line.rsplit("..", 1)[1]) == exported["specs"]["classifier"].vocab - 1  # 200 draws cover all 30 ids
    assert "streamed == whole-sequence: yes" in out and "all checks passed" in out  # a last-step head streams


# -- quantize --report on any model ------------------------------------------------------------
def test_quantize_report_on_generated_inputs_matches_the_two_models(exported, tmp_path, capsys):
    import lstminfer
    from lstminfer.quantize_report import GENERATED_BATCH, GENERATED_TIME
    from lstminfer.sample_inputs import sample_feeds

    out_path = tmp_path / "lstm.int8.onnx"
    assert main(["quantize", str(exported["lstm"]), "-o", str(out_path), "--report"]) == 0
    out = capsys.readouterr().out
    assert "int8 vs float32 on generated inputs (x float32 [8, 16, 5]" in out
    float_model = lstminfer.load(exported["lstm"])
    feeds = sample_feeds(float_model, time=GENERATED_TIME, batch=GENERATED_BATCH)
    want = float_model.run(None, feeds)
    got = lstminfer.load(out_path).run(None, feeds)
    for name, a, b in zip(float_model.output_names, got, want):
        error = np.abs(a.astype(np.float64) - b)
        assert 0 < error.max() < 0.05, name  # quantized: close, not equal
        assert f"  {name:<20} {error.max():>10.2e} {error.mean():>10.2e}" in out


def test_quantize_report_scores_labels_as_accuracy_and_targets_as_rmse(exported, tmp_path, capsys):
    import lstminfer

    spec = exported["specs"]["classifier"]
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, spec.vocab, size=(40, 12)).astype(np.int64)
    probs = lstminfer.load(exported["classifier"]).run(None, {"tokens": tokens})[0]
    labels = np.argmax(probs, axis=-1)
    labels[:10] = (labels[:10] + 1) % spec.classes  # 30 of 40 right in float32
    np.savez(tmp_path / "cls.npz", tokens=tokens, labels=labels)
    assert main(["quantize", str(exported["classifier"]), "--report", "--data", str(tmp_path / "cls.npz")]) == 0
    out = capsys.readouterr().out
    assert "(not kept)" in out and "int8 vs float32 on " + str(tmp_path / "cls.npz") + " (tokens int64 [40, 12])" in out
    assert "accuracy (output 'probs', argmax of its last axis): float32 75.00%, int8 " in out

    x = rng.standard_normal((4, 10, 5)).astype(np.float32)
    states = {n: np.zeros((2, 4, 8), np.float32) for n in ("h0", "c0")}
    y = lstminfer.load(exported["lstm"]).run(["y"], {"x": x, **states})[0]
    np.savez(tmp_path / "lstm.npz", x=x, **states, labels=y + 0.5)  # every output is off by 0.5: RMSE 0.5
    assert main(["quantize", str(exported["lstm"]), "-o", str(tmp_path / "q.onnx"), "--report",
                 "--data", str(tmp_path / "lstm.npz")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "rmse (output 'y', against the targets): float32 0.5, int8 " in line)
    assert abs(float(line.rsplit(" ", 1)[1]) - 0.5) < 0.01  # int8 moves y by < 0.01


def test_quantize_report_data_errors_are_usage_errors(exported, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x=np.zeros((1, 3, 5), np.float32), extra=np.zeros(2))
    assert main(["quantize", str(exported["lstm"]), "--report", "--data", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "one array per model input (x, h0, c0)" in err and "unknown: extra" in err and "missing: h0, c0" in err
    assert main(["quantize", str(exported["lstm"]), "--data", str(tmp_path / "bad.npz"), "-o",
                 str(tmp_path / "q.onnx")]) == 2
    assert "add --report" in capsys.readouterr().err


# -- bench ---------------------------------------------------------------------------------------
def test_bench_json_has_the_four_cases_against_onnxruntime(exported, capsys):
    assert main(["bench", str(exported["lstm"]), "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == backends.resolve_backend("auto") and result["threads"] == 1
    rows = {r["case"]: r for r in result["rows"]}
    assert list(rows) == ["stream_step", "run_t1", "sequence", "pool"]
    assert rows["sequence"]["label"] == "sequence, T=8, batch 1" and rows["pool"]["label"].startswith("pool of 3 ")
    for row in rows.values():
        assert row["lstminfer_us"] > 0
        if HAS_ORT:
            assert row["onnxruntime_us"] > 0
            assert row["ratio"] == pytest.approx(row["onnxruntime_us"] / row["lstminfer_us"])
        else:
            assert row["onnxruntime_us"] is None and row["ratio"] is None


def test_bench_table_marks_what_a_model_cannot_do(exported, capsys):
    assert main(["bench", str(exported["bigru"]), *TINY, "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "threads 2" in out and "ratio: onnxruntime time / lstminfer time" in out
    assert "stream step, 1 frame" in out and "(not streamable)" in out
    assert "(no state inputs paired with state outputs)" in out
    assert "not streamable: " in out and "bidirectional" in out
    sequence = next(line for line in out.splitlines() if line.startswith("sequence, T=8"))
    assert " us" in sequence


@pytest.mark.skipif(not HAS_ORT, reason="compares with onnxruntime")
def test_bench_of_a_model_without_state_inputs_streams_but_cannot_feed_state_back(exported, capsys):
    assert main(["bench", str(exported["gru"]), "--json", *TINY]) == 0
    rows = {r["case"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    for case in ("stream_step", "pool"):
        assert rows[case]["lstminfer_us"] > 0 and rows[case]["onnxruntime_us"] is None
        assert rows[case]["note"] == "onnxruntime: no state inputs to feed back"
    assert rows["run_t1"]["lstminfer_us"] is None and rows["run_t1"]["note"].startswith("no state inputs")
    assert rows["sequence"]["onnxruntime_us"] > 0


def test_bench_bundled_model_by_name_and_bad_options(capsys):
    assert main(["bench", "adding_lstm", "--json", *TINY]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == models.path("adding_lstm")
    assert main(["bench", "adding_lstm", "--pool", "0"]) == 2
    assert "--pool must be >= 1" in capsys.readouterr().err


# -- compile ---------------------------------------------------------------------------------------
def test_compile_says_when_the_active_backend_needs_none(capsys):
    assert main(["compile", "--backend", "cython"]) == 0
    assert "backend 'cython' (active) needs no compiling" in capsys.readouterr().out
    assert main(["compile", "--backend", "reference", "adding_lstm"]) == 0
    assert "needs no compiling" in capsys.readouterr().out


def test_compile_warms_the_kernels_of_the_given_models(capsys):
    from lstminfer.kernels import numba_backend

    if numba_backend.unavailable_reason():
        pytest.skip(numba_backend.unavailable_reason())
    assert main(["compile", "--backend", "numba", "adding_lstm", "forecast_lstm"]) == 0
    out = capsys.readouterr().out
    first = out.split("forecast_lstm")[0]
    assert "recurrent ops LSTM" in first
    assert any(f"lstm_sequence: {how}" in first for how in ("compiled", "loaded from the cache", "already loaded"))
    assert "LSTM: done above" in out and "cache: " in out
    assert main(["compile", "--backend", "numba", "adding_lstm"]) == 0  # now in this process
    out = capsys.readouterr().out
    assert "lstm_sequence: already loaded" in out and "lstm_entry: already loaded" in out
    assert "0 kernel(s) compiled, 2 already cached or loaded" in out


# -- run, --backend, exit codes, long lists ------------------------------------------------------------
def test_run_takes_a_bare_npy_for_a_single_input_model(exported, tmp_path, capsys):
    import lstminfer

    x = np.random.default_rng(0).standard_normal((6, 1, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(exported["bigru"]), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz")]) == 0
    assert "y: float32 [6, 1, 16]" in capsys.readouterr().out  # torch: both directions concatenated
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"],
                                  lstminfer.load(exported["bigru"]).run(None, {"x": x})[0])
    assert main(["run", str(exported["lstm"]), "-i", str(tmp_path / "x.npy")]) == 2
    assert "the model has 3 inputs (x, h0, c0): give each as NAME=FILE.npy" in capsys.readouterr().err


def test_backend_option_lists_the_registered_backends(capsys):
    for command in (["run", "m.onnx"], ["info", "m.onnx"], ["bench", "m.onnx"], ["compile"], ["demo"],
                    ["quantize", "--report"], ["serve"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--backend", "bogus"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice: 'bogus'" in err
        assert all(f"'{b}'" in err for b in backends.known_backends()), err


def test_exit_codes_usage_2_failed_run_1(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    node = oh.make_node("Frobnicate", ["X"], ["Y"], domain="com.example")
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("X", TP.FLOAT, [2])],
                          [oh.make_tensor_value_info("Y", TP.FLOAT, [2])])
    path = tmp_path / "custom.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)]),
              path)
    assert main(["run", str(path)]) == 1  # the model cannot run: a failed run, not a usage error
    assert "Frobnicate" in capsys.readouterr().err
    assert main(["demo", "--model", str(path)]) == 1
    with pytest.raises(SystemExit) as stop:
        main(["bench"])
    assert stop.value.code == 2


def test_long_lists_in_errors_are_cut(tmp_path, capsys):
    names = [f"in{i}" for i in range(150)]
    graph = oh.make_graph([oh.make_node("Sum", names, ["Y"])], "g",
                          [oh.make_tensor_value_info(n, TP.FLOAT, [1]) for n in names],
                          [oh.make_tensor_value_info("Y", TP.FLOAT, [1])])
    path = tmp_path / "wide.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    np.save(tmp_path / "x.npy", np.zeros(1, np.float32))
    assert main(["run", str(path), "-i", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "(in0, in1, in2, in3, in4, in5, in6, in7, in8, in9, ... and 140 more)" in err and "in149" not in err
    import lstminfer

    with pytest.raises(lstminfer.InvalidInputError, match=r"missing input 'in1'.* in9, \.\.\. and 140 more$"):
        lstminfer.load(path).run(None, {"in0": np.zeros(1, np.float32)})


def test_without_onnxruntime_demo_and_bench_say_so_and_pass(exported, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["demo", "--model", str(exported["lstm"])]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime: not installed (pip install onnxruntime" in out and "all checks passed" in out
    assert main(["bench", str(exported["lstm"]), "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["onnxruntime"] is None and result["remarks"][-1].startswith("onnxruntime: not installed")
    assert all(r["onnxruntime_us"] is None and r["lstminfer_us"] > 0 for r in result["rows"])
