"""The models shipped in lstminfer/models: present, small, documented, and as good as documented."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import lstminfer
from lstminfer import models, tasks

EXPECTED = {"adding_lstm": ("adding", "lstm"), "forecast_lstm": ("forecast", "lstm"),
            "forecast_gru": ("forecast", "gru")}
RESCORE_SEQUENCES = 400
RESCORE_SEED = 20240611  # not a seed the training tool uses: fresh data


def test_available_lists_the_bundled_models():
    assert set(EXPECTED) <= set(models.available())
    assert models.DEFAULT in models.available()
    assert models.available() == sorted(models.available())


def test_unknown_name_is_a_clear_error():
    with pytest.raises(lstminfer.InvalidArgumentError, match="no bundled model named 'nope'; available: adding_lstm"):
        models.path("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_file_is_small_and_matches_its_metadata(name):
    path = Path(models.path(name))
    data = path.read_bytes()
    assert len(data) < 1_000_000
    meta = models.metadata(name)
    task, cell = EXPECTED[name]
    assert (meta["name"], meta["task"], meta["cell"]) == (name, task, cell)
    assert meta["export"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["export"]["bytes"] == len(data) and meta["export"]["opset"] == 17
    assert meta["export"]["max_abs_diff_torch_vs_onnxruntime"] <= 1e-5


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metadata_is_complete(name):
    meta = models.metadata(name)
    assert meta["task_title"] == tasks.get(meta["task"]).title
    assert meta["hidden_size"] > 0 and meta["num_layers"] >= 1 and meta["seq_len"] > 1
    states = ["h0", "c0"] if meta["cell"] == "lstm" else ["h0"]
    assert list(meta["inputs"]) == ["x", *states]
    assert list(meta["outputs"]) == ["y", *[s.replace("0", "_n") for s in states]]
    assert all(isinstance(v, str) and v for v in [*meta["inputs"].values(), *meta["outputs"].values()])
    metric = meta["metric"]
    assert metric["name"] == tasks.get(meta["task"]).metric
    assert metric["margin"] > 0 and metric["value"] == metric["all"][metric["name"]]
    assert metric["description"] and metric["summary"]
    assert meta["command"].startswith("python tools/train.py --task " + meta["task"])
    training = meta["training"]
    assert training["device"] and training["torch"] and training["steps"] > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_inputs_and_onnx_metadata_agree_with_the_json(name):
    meta = models.metadata(name)
    model = lstminfer.load(models.path(name))
    assert model.input_names == list(meta["inputs"])
    assert model.output_names == list(meta["outputs"])
    props = model.get_modelmeta().custom_metadata_map
    assert props["lstminfer.task"] == meta["task"]
    assert int(props["lstminfer.seq_len"]) == meta["seq_len"]
    states_out = [n for n in meta["outputs"] if n != "y"]
    assert json.loads(props["lstminfer.state"]) == dict(zip(list(meta["inputs"])[1:], states_out))


@functools.lru_cache(maxsize=None)
def _score_with_lstminfer(name: str):
    meta = models.metadata(name)
    task = tasks.get(meta["task"])
    model = lstminfer.load(models.path(name))
    x, target = task.sample(RESCORE_SEQUENCES, meta["seq_len"], np.random.default_rng(RESCORE_SEED))
    zeros = np.zeros((meta["num_layers"], len(x), meta["hidden_size"]), np.float32)
    feeds = {"x": x, **{state: zeros for state in list(meta["inputs"])[1:]}}
    outputs = model.run(None, feeds)
    return meta, task, feeds, outputs, task.score(task.answer(outputs[0]), target, x)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metric_recomputed_with_lstminfer_is_within_the_documented_margin(name):
    meta, task, _, _, scores = _score_with_lstminfer(name)
    metric = meta["metric"]
    assert abs(scores[metric["name"]] - metric["value"]) <= metric["margin"], (scores, metric)
    # and the model is far better than a trivial baseline, not just "as documented"
    if task.name == "adding":
        assert scores["accuracy"] > 0.9  # answering the mean scores ~8%
    else:
        assert scores["rmse"] < 0.5 * scores["baseline_rmse"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lstminfer_matches_onnxruntime_on_the_bundled_model(name):
    ort = pytest.importorskip("onnxruntime")
    _, _, feeds, outputs, _ = _score_with_lstminfer(name)
    expected = ort.InferenceSession(models.path(name), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_adding_metrics_record_the_plain_rnn_failing_where_the_lstm_succeeds():
    report = json.loads((Path(models.__file__).parent / "adding_metrics.json").read_text())
    lstm, rnn = report["cells"]["lstm"], report["cells"]["rnn"]
    assert lstm["reached_target"] and lstm["test"]["accuracy"] > 0.99
    assert not rnn["reached_target"] and rnn["test"]["accuracy"] < 0.2
    assert rnn["steps"] >= lstm["steps"]  # the RNN had at least the LSTM's training budget


# -- the task data the models are trained and scored on (lstminfer.tasks) -----------
def test_adding_problem_data_follow_the_definition():
    task = tasks.get("adding")
    x, target = task.sample(300, 50, np.random.default_rng(1))
    assert x.shape == (300, 50, 2) and x.dtype == np.float32 and target.shape == (300, 1)
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert np.all(markers.sum(axis=1) == 2)
    assert np.all(markers[:, :25].sum(axis=1) == 1) and np.all(markers[:, 25:].sum(axis=1) == 1)
    np.testing.assert_allclose(target[:, 0], (values * markers).sum(axis=1), rtol=1e-6)


def test_adding_problem_score():
    task = tasks.get("adding")
    x, target = task.sample(20000, 10, np.random.default_rng(2))
    assert task.score(target, target, x) == {"accuracy": 1.0, "mse": 0.0}
    assert task.score(target + 0.05, target, x)["accuracy"] == 0.0
    # The sum of two U[0,1] is triangular: P(|sum - 1| < 0.04) = 1 - 0.96**2 = 0.0784.
    assert abs(task.score(np.ones_like(target), target, x)["accuracy"] - 0.0784) < 0.01


def test_forecast_target_is_the_next_noise_free_value():
    import dataclasses

    task = tasks.get("forecast")
    noiseless = dataclasses.replace(task, noise=0.0)
    x, target = noiseless.sample(5, 60, np.random.default_rng(3))
    assert x.shape == (5, 60, 1) and target.shape == (5, 60 - task.warmup, 1)
    np.testing.assert_array_equal(target[:, :-1], x[:, task.warmup + 1:])  # y[t] predicts x[t + 1]
    x, target = task.sample(200, 60, np.random.default_rng(3))
    noise = x[:, task.warmup + 1:] - target[:, :-1]
    assert abs(noise.std() - task.noise) < 0.01
    scores = task.score(target, target, x)
    assert scores["rmse"] == 0.0 and scores["baseline_rmse"] > 2 * task.noise


def test_task_data_are_reproducible_and_checked():
    for task in tasks.TASKS.values():
        first = task.sample(4, 30, np.random.default_rng(7))
        second = task.sample(4, 30, np.random.default_rng(7))
        assert all(np.array_equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="forecast needs seq_len > warmup"):
        tasks.get("forecast").sample(1, 20, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown task 'copy'; known tasks: adding, forecast"):
        tasks.get("copy")
