"""The lstminfer command line: info, run, --help."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from lstminfer.cli import main


def lstm_model(direction="forward", hidden=4, inp=3):
    D = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D, 4 * hidden, inp)).astype(np.float32)
    R = rng.standard_normal((D, 4 * hidden, hidden)).astype(np.float32)
    node = oh.make_node("LSTM", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=hidden, direction=direction, name="enc")
    graph = oh.make_graph(
        [node], "g",
        [oh.make_tensor_value_info("X", TP.FLOAT, ["T", "B", inp])],
        [oh.make_tensor_value_info("Y", TP.FLOAT, ["T", D, "B", hidden]),
         oh.make_tensor_value_info("Y_h", TP.FLOAT, [D, "B", hidden])],
        [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(R, "R")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 14)])


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "lstm.onnx"
    onnx.save(lstm_model(), path)
    return path


def test_info_lists_io_ops_and_layers(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    out = capsys.readouterr().out
    for part in ("inputs:", "X: tensor(float) ['T', 'B', 3]", "outputs:", "Y_h", "LSTM x1",
                 "enc: LSTM forward input=3 hidden=4 parameters=" + str(16 * 3 + 16 * 4),
                 "streamable: yes", "runs on: ", "cpu features:"):
        assert part in out, part


def test_info_reports_bidirectional_as_not_streamable(tmp_path, capsys):
    path = tmp_path / "bi.onnx"
    onnx.save(lstm_model("bidirectional"), path)
    assert main(["info", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "streamable: no" in out and "direction=bidirectional" in out
    assert "enc: LSTM" in out  # the plan lines


def test_run_reads_npy_and_writes_npz(model_path, tmp_path, capsys):
    import lstminfer

    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "out.npz"
    assert main(["run", str(model_path), "--input", f"X={tmp_path / 'x.npy'}", "-o", str(out_path)]) == 0
    assert "Y_h: float32 [1, 2, 4]" in capsys.readouterr().out
    saved = np.load(out_path)
    expected = lstminfer.load(model_path).run(None, {"X": x})
    np.testing.assert_array_equal(saved["Y"], expected[0])
    np.testing.assert_array_equal(saved["Y_h"], expected[1])


def test_run_errors_are_clear_and_exit_2(model_path, tmp_path, capsys):
    np.save(tmp_path / "x64.npy", np.zeros((5, 2, 3)))
    assert main(["run", str(model_path), "--input", f"X={tmp_path / 'x64.npy'}"]) == 2
    assert "input 'X': wrong dtype" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", str(model_path), "--input", "X="]) == 2
    assert "--input expects NAME=FILE.npy" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["info"], ["run"], ["bench"], ["compile"], ["quantize"], ["demo"]])
def test_help_on_every_command(command):
    result = subprocess.run(
        [sys.executable, "-m", "lstminfer", *command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "usage: lstminfer" in result.stdout


def test_quantize_writes_a_model_that_loads_back_and_info_shows_int8(model_path, tmp_path, capsys):
    import lstminfer

    out_path = tmp_path / "int8.onnx"
    assert main(["quantize", str(model_path), "-o", str(out_path)]) == 0
    printed = capsys.readouterr().out
    assert "(int8): 2 weight(s) quantized" in printed and "int8: W [1, 16, 3]" in printed
    x = np.random.default_rng(2).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(lstminfer.load(out_path).run(None, {"X": x})[1],
                               lstminfer.load(model_path, quantize="int8").run(None, {"X": x})[1], atol=1e-6)
    assert main(["info", str(out_path)]) == 0
    assert "precision: int8 (" in capsys.readouterr().out
    assert main(["info", str(model_path), "--quantize", "bf16"]) == 0
    assert "precision: bf16 (" in capsys.readouterr().out


def test_quantize_refusals_exit_2_with_the_reason(model_path, capsys):
    assert main(["quantize", str(model_path), "-o", str(model_path)]) == 2
    assert "is the source file" in capsys.readouterr().err
    assert main(["quantize", str(model_path)]) == 2
    assert "expected IN -o OUT" in capsys.readouterr().err


def test_quantize_report_prints_the_accuracy_table(capsys):
    assert main(["quantize", "--report", "--sequences", "40"]) == 0
    out = capsys.readouterr().out
    assert "max|err|" in out
    for name in ("adding_lstm", "forecast_lstm", "forecast_gru"):
        assert all(f"{name:<14} {p:<9}" in out for p in ("float32", "int8", "bf16")), name


def test_info_plan_shows_the_compiled_program(capsys):
    from lstminfer import models

    assert main(["info", models.path("adding_lstm"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "compiled program for x [1, 1, 2], h0 [1, 1, 32], c0 [1, 1, 32]:" in out
    assert out.count("vanished (a view)") == 3 and "C LSTM kernel" in out and "fused into" in out
