"""``lstminfer demo``: exit code and the key lines, on bundled, user and unknown models."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstminfer import demo, models

REPO = Path(__file__).resolve().parent.parent


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _demo_command() -> list[str]:
    """``python -m lstminfer demo`` once the CLI has the subcommand; the module's main() until then."""
    from lstminfer import cli

    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "demo" in subcommands.choices:
        return [sys.executable, "-m", "lstminfer", "demo"]
    return [sys.executable, "-c", "import sys; from lstminfer.demo import main; sys.exit(main())"]


def test_demo_with_no_argument_prints_metric_streaming_and_latency(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # no time bound beyond a hang's: speed is benchmarks/' business, and under QEMU (tools/aarch64_check.sh)
    # the demo takes over a minute
    proc = subprocess.run(_demo_command(), capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "adding_lstm (bundled)" in out
    assert "adding problem, T=200: " in out and "% within 0.04" in out
    assert "through model.stream(), 200 steps one at a time: streamed == whole-sequence: yes, max abs diff" in out
    assert "latency lstminfer" in out and "us/step with Stream.step" in out and "us/step with run()" in out
    if _has_onnxruntime():
        assert "latency onnxruntime" in out and "onnxruntime vs lstminfer on the batch: max abs diff" in out
        assert re.search(r"max abs diff \S+: pass \(every value within 1e-05 \+ 1e-05 x \|onnxruntime value\|; "
                         r"the worst at \d+% of its bound\)", out)
    assert "all checks passed" in out


def test_demo_runs_another_bundled_model_by_name(capsys):
    assert demo.main(["--model", "forecast_gru", "--batch", "50"]) == 0
    out = capsys.readouterr().out
    assert "forecast_gru (bundled)" in out and "model: GRU" in out
    assert "forecast, T=100: RMSE" in out and "rmse when trained" in out
    assert "streamed == whole-sequence: yes" in out and "all checks passed" in out


def test_demo_reads_the_task_of_a_user_model_from_its_onnx_metadata(tmp_path, capsys):
    user_model = tmp_path / "my_forecaster.onnx"  # no .json next to it: only the ONNX metadata
    shutil.copy(models.path("forecast_lstm"), user_model)
    assert demo.main(["--model", str(user_model), "--batch", "20", "--seq-len", "40"]) == 0
    out = capsys.readouterr().out
    assert str(user_model) in out and "forecast, T=40: RMSE" in out
    assert "when trained" not in out  # nothing to compare against
    assert "streamed == whole-sequence: yes" in out


def test_demo_fails_when_the_metric_is_not_what_the_metadata_promises(tmp_path, capsys):
    shutil.copy(models.path("adding_lstm"), tmp_path / "m.onnx")
    meta = models.metadata("adding_lstm")
    meta["metric"].update(value=0.5, margin=0.01)  # a model that does far better than documented is suspect too
    (tmp_path / "m.json").write_text(json.dumps(meta))
    assert demo.main(["--model", str(tmp_path / "m.onnx"), "--batch", "50"]) == 1
    out = capsys.readouterr().out
    assert "OUT OF MARGIN" in out and "FAILED" in out and "is not within 0.01 of the trained 0.5" in out


def test_demo_on_a_model_without_task_checks_it_on_generated_inputs(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("W", (1, 6, 3)), ("R", (1, 6, 2)))]
    graph = helper.make_graph(
        [helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=2, name="gru0")], "plain",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["time", "batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=weights)
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert demo.main(["--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "task unknown" in out and "generated inputs (seed 0): X float32 [16, 1, 3]" in out
    assert "lstminfer (" in out and "ms per run (median)" in out
    if _has_onnxruntime():
        assert ": pass (every value within" in out
    assert "streaming 16 steps in chunks of 1, 2, 3, 4, 5, 1" in out and "streamed == whole-sequence: yes" in out
    assert "all checks passed" in out


def test_demo_on_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert demo.main(["--model", str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no model file" in err and "bundled models: adding_lstm" in err


def test_add_demo_parser_registers_the_subcommand():
    parser = argparse.ArgumentParser(prog="lstminfer")
    sub = parser.add_subparsers(dest="command")
    demo.add_demo_parser(sub)
    args = parser.parse_args(["demo", "--model", "forecast_gru", "--batch", "7"])
    assert args.func is demo.run_demo and args.model == "forecast_gru" and args.batch == 7
    defaults = parser.parse_args(["demo"])
    assert defaults.model is None and defaults.backend == "auto" and defaults.seed == 0
