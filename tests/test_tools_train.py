"""tools/train.py and tools/export.py: a CPU smoke training, and the export check catching bad exports."""
from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="tools/ need torch (installed separately: pip install torch)")
pytest.importorskip("tqdm", reason="tools/train.py needs tqdm (the 'tools' extra)")
ort = pytest.importorskip("onnxruntime", reason="the export check runs onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"


@pytest.fixture(scope="module")
def tools():
    """tools/ modules, imported the way tools/train.py imports its siblings."""
    sys.path.insert(0, str(TOOLS))
    try:
        yield {name: importlib.import_module(name) for name in ("nets", "export", "train")}
    finally:
        sys.path.remove(str(TOOLS))


def tiny_model(nets, cell, input_size=2, hidden=5, layers=1, seed=0):
    torch.manual_seed(seed)
    return nets.SequenceModel(cell, input_size, hidden, num_layers=layers)


# -- smoke training through the real command line -------------------------------
def test_smoke_training_cli_writes_checked_models_and_metrics(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(TOOLS / "train.py"), "--task", "adding", "--cells", "lstm", "rnn",
           "--export", "lstm", "rnn", "--seq-len", "12", "--hidden", "4", "--batch", "8",
           "--max-steps", "3", "--eval-every", "2", "--device", "cpu", "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "LSTM adding problem, T=12" in proc.stdout and "RNN  adding problem, T=12" in proc.stdout
    assert "adding/lstm" in proc.stderr  # the tqdm progress bar
    assert "accuracy=" in proc.stderr and "loss=" in proc.stderr

    report = json.loads((out / "adding_metrics.json").read_text())
    assert set(report["cells"]) == {"lstm", "rnn"}
    for cell in ("lstm", "rnn"):
        result = report["cells"][cell]
        assert result["steps"] == 3 and not result["early_stopped"]
        assert [h["step"] for h in result["validation_history"]] == [2, 3]
        assert 0.0 <= result["test"]["accuracy"] <= 1.0
        meta = json.loads((out / f"adding_{cell}.json").read_text())
        assert meta["export"]["max_abs_diff_torch_vs_onnxruntime"] <= 1e-5
        assert meta["training"]["device"].startswith("cpu")
        assert shlex.split(meta["command"])[:2] == ["python", "tools/train.py"]
        session = ort.InferenceSession(str(out / f"adding_{cell}.onnx"))
        feeds = {"x": np.zeros((3, 7, 2), np.float32), "h0": np.zeros((1, 3, 4), np.float32)}
        if cell == "lstm":
            feeds["c0"] = feeds["h0"]
        y = session.run(["y"], feeds)[0]
        assert y.shape == (3, 7, 1)


def test_smoke_training_in_process_is_deterministic(tools, tmp_path, capsys):
    args = ["--task", "forecast", "--cells", "gru", "--seq-len", "25", "--hidden", "3", "--batch", "4",
            "--max-steps", "4", "--eval-every", "4", "--device", "cpu", "--quiet"]
    assert tools["train"].main(args + ["--out-dir", str(tmp_path / "a")]) == 0
    assert tools["train"].main(args + ["--out-dir", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "forecast_metrics.json").read_text())
    second = json.loads((tmp_path / "b" / "forecast_metrics.json").read_text())
    assert first["cells"]["gru"]["test"] == second["cells"]["gru"]["test"]
    assert (tmp_path / "a" / "forecast_gru.onnx").read_bytes() == (tmp_path / "b" / "forecast_gru.onnx").read_bytes()
    assert "forecast, T=25: RMSE" in capsys.readouterr().out


def test_early_stop_on_target(tools, tmp_path):
    # Any model beats an RMSE target of 100: the first evaluation stops training.
    args = ["--task", "forecast", "--cells", "lstm", "--export", "--seq-len", "25", "--hidden", "3",
            "--batch", "4", "--max-steps", "50", "--eval-every", "2", "--target", "100", "--device", "cpu",
            "--quiet", "--out-dir", str(tmp_path)]
    assert tools["train"].main(args) == 0
    result = json.loads((tmp_path / "forecast_metrics.json").read_text())["cells"]["lstm"]
    assert result["early_stopped"] and result["steps"] == 2
    assert not (tmp_path / "forecast_lstm.onnx").exists()  # --export with no cell exports nothing


def test_cli_rejects_exporting_an_untrained_cell(tools, capsys):
    with pytest.raises(SystemExit):
        tools["train"].parse_args(["--task", "adding", "--cells", "lstm", "--export", "gru"])
    assert "--export gru: not in --cells lstm" in capsys.readouterr().err


def test_device_cuda_without_cuda_fails_clearly(tools):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path needs a CPU-only torch")
    with pytest.raises(SystemExit, match="no CUDA device"):
        tools["train"].pick_device("cuda")
    assert tools["train"].pick_device("auto").type == "cpu"


# -- the export and its check --------------------------------------------------
@pytest.mark.parametrize("cell, op", [("lstm", "LSTM"), ("gru", "GRU"), ("rnn", "RNN")])
def test_export_has_recurrent_op_dynamic_axes_and_state_io(tools, cell, op):
    model = tiny_model(tools["nets"], cell, layers=2 if cell == "gru" else 1)
    meta = tools["export"].onnx_metadata("adding", 50, cell)
    onnx_bytes, diff = tools["export"].export_checked(model, 2, meta)
    assert diff <= 1e-5
    proto = onnx.load_from_string(onnx_bytes)
    assert proto.opset_import[0].version == 17
    assert op in [n.op_type for n in proto.graph.node]
    states_in, states_out = tools["nets"].state_names(cell)
    assert [i.name for i in proto.graph.input] == ["x", *states_in]
    assert [o.name for o in proto.graph.output] == ["y", *states_out]
    x_dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]]
    assert x_dims == ["batch", "time"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["lstminfer.task"] == "adding" and props["lstminfer.seq_len"] == "50"
    assert json.loads(props["lstminfer.state"]) == dict(zip(states_in, states_out))


def _swap_gates(onnx_bytes: bytes, op: str) -> bytes:
    """A classic wrong export: the recurrent weights' gate blocks in the wrong order."""
    proto = onnx.load_from_string(onnx_bytes)
    node = next(n for n in proto.graph.node if n.op_type == op)
    for init in proto.graph.initializer:
        if init.name == node.input[1]:  # W: [directions, gates * hidden, input]
            w = numpy_helper.to_array(init)
            blocks = np.split(w, 4 if op == "LSTM" else 3, axis=1)
            blocks[0], blocks[1] = blocks[1], blocks[0]
            init.CopyFrom(numpy_helper.from_array(np.concatenate(blocks, axis=1), init.name))
    return proto.SerializeToString()


@pytest.mark.parametrize("cell, op", [("lstm", "LSTM"), ("gru", "GRU")])
def test_export_check_catches_swapped_gates(tools, cell, op):
    model = tiny_model(tools["nets"], cell)
    wrong = _swap_gates(tools["export"].export_onnx(model, 2), op)
    with pytest.raises(tools["export"].ExportCheckError, match="differs between PyTorch and onnxruntime"):
        tools["export"].check_export(wrong, model, 2)


def test_export_check_catches_a_model_that_is_not_the_exported_one(tools):
    onnx_bytes = tools["export"].export_onnx(tiny_model(tools["nets"], "lstm", seed=0), 2)
    with pytest.raises(tools["export"].ExportCheckError, match="output 'y' differs"):
        tools["export"].check_export(onnx_bytes, tiny_model(tools["nets"], "lstm", seed=1), 2)


def test_export_check_catches_static_batch_and_time(tools):
    """Exported without dynamic axes, the model only runs at export-time sizes: the check says so."""
    import io
    import warnings

    model = tiny_model(tools["nets"], "gru").eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 5, 2), torch.zeros(1, 2, 5)), buffer, opset_version=17,
                          dynamo=False, input_names=["x", "h0"], output_names=["y", "h_n"])
    with pytest.raises(tools["export"].ExportCheckError, match="onnxruntime cannot run the exported model"):
        tools["export"].check_export(buffer.getvalue(), model, 2)


def test_training_tool_fails_loudly_and_writes_nothing_on_a_wrong_export(tools, tmp_path, monkeypatch, capsys):
    export = tools["export"]
    real_export = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: _swap_gates(real_export(*a, **k), "LSTM"))
    args = ["--task", "adding", "--cells", "lstm", "--seq-len", "10", "--hidden", "3", "--batch", "4",
            "--max-steps", "2", "--device", "cpu", "--quiet", "--out-dir", str(tmp_path)]
    assert tools["train"].main(args) == 1
    err = capsys.readouterr().err
    assert "adding_lstm: export check failed" in err and "nothing written" in err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("adding_lstm.json"))


# -- the bundled models' commands are real commands of this tool ---------------------
def test_bundled_models_commands_parse_to_their_recorded_settings(tools):
    from lstminfer import models

    for name in models.available():
        meta = models.metadata(name)
        argv = shlex.split(meta["command"])
        assert argv[:2] == ["python", "tools/train.py"], meta["command"]
        args = tools["train"].parse_args(argv[2:])
        assert (args.task, args.seq_len, args.hidden, args.layers) == (
            meta["task"], meta["seq_len"], meta["hidden_size"], meta["num_layers"])
        assert meta["cell"] in args.export
        assert (args.batch, args.lr, args.clip, args.target, args.seed) == tuple(
            meta["training"][k] for k in ("batch", "lr", "clip", "target", "seed"))
        assert args.margin == meta["metric"]["margin"]
