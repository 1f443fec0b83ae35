"""``lstminfer.ray`` on a local Ray cluster (2 CPUs, loopback): the serve API over 2 replicas, streams moved.

100 concurrent streams (HTTP and WebSocket) each equal the in-process whole-sequence run; scaling the
stream owners 2 -> 1 -> 2 while the streams run changes no output; a killed replica's streams get the
documented answer ("was lost", or "resumed from its checkpoint after chunk N" and then equal outputs
once the client sends again from chunk N + 1) while every other stream goes on undisturbed.
Select with ``-m ray``; skipped when Ray Serve is not installed.
"""
import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("websockets")
pytest.importorskip("fastapi")

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
import lstminfer.ray  # noqa: E402
from lstminfer.errors import InvalidArgumentError  # noqa: E402
from lstminfer.ray.application import APP_NAME, scale_owners  # noqa: E402
from ray_streams import Gate, HttpStream, StreamFailed, WebSocketStream, chunks_of  # noqa: E402

pytestmark = pytest.mark.ray

MODEL = "adding_lstm"
ROOT = Path(lstminfer.__file__).resolve().parents[1]  # the workers import the lstminfer this process imports
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model():
    return lstminfer.Model(lstminfer.models.path(MODEL))


@pytest.fixture(scope="module")
def cluster():
    """A local Ray (2 CPUs, loopback, no dashboard) with Serve on a free port; its workers import our lstminfer."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved) if p)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _deploy(checkpoint_every: int = 0, replicas: int = 2) -> None:
    """What ``serve run lstminfer.ray:app replicas=2 checkpoint_every=K`` deploys (its builder), scalable."""
    application = lstminfer.ray.app({"model": f"{MODEL}={lstminfer.models.path(MODEL)}", "replicas": str(replicas),
                                     "checkpoint_every": str(checkpoint_every)})
    serve.run(application, name=APP_NAME, route_prefix="/", external_scaler_enabled=True)


def _directory():
    return serve.get_deployment_handle("StreamDirectory", APP_NAME)


def _owner_replicas() -> int:
    return serve.status().applications[APP_NAME].deployments["StreamOwner"].replica_states.get("RUNNING", 0)


def _wait_for(condition, timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _whole(model, chunks: list[np.ndarray]) -> np.ndarray:
    out = model.predict(x=np.concatenate(chunks, axis=1))
    return out["y"] if isinstance(out, dict) else out


async def _run_streams(url: str, plans: list[tuple[str, list[np.ndarray]]], pauses: dict[int, Gate],
                       first_sid: int) -> list:
    """Every plan (transport, chunks) as one stream, all at once; after chunk k, each waits at ``pauses[k]``.
    Per stream: (its id, the outputs of its chunks concatenated) or the ``StreamFailed``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(i: int, transport: str, chunks: list[np.ndarray]):
            stream = (HttpStream(session, url, MODEL, first_sid + i) if transport == "http"
                      else WebSocketStream(url, MODEL))
            failure, resumed_at = None, []
            await stream.open()
            outputs: list[np.ndarray] = []
            k, paused = 0, set()
            try:
                while k < len(chunks):
                    try:
                        outputs[k:] = [await stream.step(chunks[k], last=k + 1 == len(chunks))]
                        k += 1
                    except StreamFailed as e:
                        after = e.body.get("resumed_after_chunk")
                        if after is not None:  # the replica died: send again from chunk after + 1
                            resumed_at.append(after)
                            del outputs[after:]
                            k = after
                            continue
                        failure = failure or e
                        k += 1
                    if k in pauses and k not in paused:
                        paused.add(k)
                        await pauses[k].wait()
            finally:
                await stream.close()
            if resumed_at:
                failure = failure or resumed_at
            return stream.sequence_id, outputs, failure

        return await asyncio.gather(*(one(i, t, c) for i, (t, c) in enumerate(plans)))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_builder_takes_serve_run_arguments_and_refuses_unknown_ones():
    assert lstminfer.ray.app({"replicas": "3", "checkpoint_every": "5"}) is not None
    with pytest.raises(InvalidArgumentError, match="unknown argument.*replica_count"):
        lstminfer.ray.app({"replica_count": "3"})
    with pytest.raises(InvalidArgumentError, match="max_replicas >= replicas"):
        lstminfer.ray.app({"replicas": "3", "max_replicas": "2"})


async def _text_frames_continue_a_sequence_started_over_http(url: str, model) -> None:
    """A sequence started over HTTP, attached over the WebSocket (``?sequence_id=``), stepped by a v2 text frame."""
    from websockets.asyncio.client import connect

    chunks = chunks_of(np.random.default_rng(5), 2)
    async with aiohttp.ClientSession() as session:
        first = await HttpStream(session, url, MODEL, 777).step(chunks[0])
    ws_url = url.replace("http://", "ws://") + f"/v2/models/{MODEL}/stream?sequence_id=777"
    async with connect(ws_url, open_timeout=60) as ws:
        assert json.loads(await ws.recv())["sequence_id"] == 777
        await ws.send(json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(chunks[1].shape),
                                              "data": chunks[1].ravel().tolist()}], "outputs": [{"name": "y"}]}))
        reply = json.loads(await ws.recv())
    async with aiohttp.ClientSession() as session:  # attached: it stays open after the connection; end it
        async with session.delete(f"{url}/v2/models/{MODEL}/sequences/777") as response:
            assert response.status == 204
    second = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(reply["outputs"][0]["shape"])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), _whole(model, chunks), atol=TOLERANCE,
                               rtol=TOLERANCE)


def test_same_api_and_100_concurrent_streams_over_two_replicas(cluster, model):
    _deploy()
    assert _owner_replicas() == 2
    status, body = _get(f"{cluster}/v2/models/{MODEL}")
    assert status == 200 and json.loads(body)["name"] == MODEL
    status, body = _get(f"{cluster}/v2/models/nope")
    assert status == 404 and json.loads(body) == {"error": f"unknown model 'nope' (serving: {MODEL})"}
    status, body = _get(f"{cluster}/v2/nothing/here")
    assert status == 404 and "no endpoint GET /v2/nothing/here" in json.loads(body)["error"]

    status, body = _get(f"{cluster}/v2/models/{MODEL}/sequences/{'x' * 200}/state")
    assert status == 400 and "at most 128 bytes" in json.loads(body)["error"]
    status, body = _get(f"{cluster}/v2/models/{MODEL}/sequences/424242/state")
    assert status == 404 and json.loads(body)["error"].startswith("unknown sequence 424242")

    asyncio.run(_text_frames_continue_a_sequence_started_over_http(cluster, model))

    rng = np.random.default_rng(1)
    plans = [("http" if i % 2 else "ws", chunks_of(rng, 5)) for i in range(100)]
    midway = Gate(len(plans))

    async def run():
        task = asyncio.ensure_future(_run_streams(cluster, plans, {2: midway}, first_sid=10_000))
        await midway.all_here.wait()
        owners = await asyncio.to_thread(lambda: _directory().owners.remote().result())
        midway.go.set()
        return owners, await task

    owners, results = asyncio.run(run())
    assert len(owners) == 100 and len(set(owners.values())) == 2, "the streams are spread over both replicas"
    for (sid, outputs, failure), (transport, chunks) in zip(results, plans):
        assert failure is None, f"{transport} stream {sid}: {failure}"
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), _whole(model, chunks), atol=TOLERANCE,
                                   rtol=TOLERANCE, err_msg=f"{transport} stream {sid}")
    status, text = _get(f"{cluster}/metrics")
    assert status == 200
    for name in ("lstminfer_open_streams", "lstminfer_requests_total", "lstminfer_batch_size_bucket",
                 "lstminfer_queue_delay_seconds_bucket", "lstminfer_step_seconds_bucket"):
        assert name in text.decode()
    counted = {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
               if line.startswith("lstminfer_requests_total")}
    assert counted['lstminfer_requests_total{kind="infer"}'] >= 50 * 5  # the HTTP streams' chunks
    assert counted['lstminfer_requests_total{kind="frame"}'] >= 50 * 5  # the WebSocket streams' chunks


def test_scale_two_one_two_while_streaming_changes_no_output(cluster, model):
    _deploy()
    rng = np.random.default_rng(2)
    plans = [("http" if i % 2 else "ws", chunks_of(rng, 9)) for i in range(100)]
    after_3, after_6 = Gate(len(plans)), Gate(len(plans))

    async def run():
        task = asyncio.ensure_future(_run_streams(cluster, plans, {3: after_3, 6: after_6}, first_sid=20_000))
        await after_3.all_here.wait()
        await asyncio.to_thread(scale_owners, 1)
        after_3.go.set()  # chunks 4..6 arrive while the second replica drains and hands its streams over
        await asyncio.to_thread(_wait_for, lambda: _owner_replicas() == 1, 60, "one owner replica")
        await after_6.all_here.wait()
        on_one = await asyncio.to_thread(lambda: _directory().owners.remote().result())
        await asyncio.to_thread(scale_owners, 2)
        await asyncio.to_thread(_wait_for, lambda: _owner_replicas() == 2, 60, "two owner replicas")
        after_6.go.set()  # chunks 7..9: the new replica claims its share from the one that holds them all
        results = await task
        on_two = await asyncio.to_thread(lambda: _directory().owners.remote().result())
        return on_one, on_two, results

    on_one, on_two, results = asyncio.run(run())
    assert len(set(on_one.values())) == 1, "with one replica, one replica holds every stream"
    for (sid, outputs, failure), (transport, chunks) in zip(results, plans):
        assert failure is None, f"{transport} stream {sid}: {failure}"
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), _whole(model, chunks), atol=TOLERANCE,
                                   rtol=TOLERANCE, err_msg=f"{transport} stream {sid}")
    moved = serve.get_deployment_handle("StreamOwner", APP_NAME)
    status, text = _get(f"{cluster}/metrics")
    line = next(x for x in text.decode().splitlines() if x.startswith("lstminfer_moved_streams_total"))
    assert float(line.split()[-1]) > 0, "the scale-up moved streams to the new replica"
    del moved, on_two


def _kill_one_replica(cluster, model, checkpoint_every: int):
    """20 WebSocket and 10 HTTP streams, one replica killed after chunk 3: (victim's sids, results, plans)."""
    _deploy(checkpoint_every=checkpoint_every)
    rng = np.random.default_rng(3 + checkpoint_every)
    plans = [("http" if i % 3 == 2 else "ws", chunks_of(rng, 6)) for i in range(30)]
    after_3 = Gate(len(plans))

    async def run():
        task = asyncio.ensure_future(_run_streams(cluster, plans, {3: after_3}, first_sid=30_000 + 100 * checkpoint_every))
        await after_3.all_here.wait()
        await asyncio.sleep(0.5)  # the checkpoints after chunk 2 are on their way: let them land
        directory = _directory()
        owners = await asyncio.to_thread(lambda: directory.owners.remote().result())
        handles = await asyncio.to_thread(lambda: directory.replica_handles.remote().result())
        victim = sorted(set(owners.values()))[0]
        ray.kill(handles[victim], no_restart=True)
        after_3.go.set()
        return {key[1] for key, replica in owners.items() if replica == victim}, await task

    victims, results = asyncio.run(run())
    assert 0 < len(victims) < len(plans)
    return victims, results, plans


def test_a_killed_replica_without_checkpoints_loses_only_its_streams(cluster, model):
    victims, results, plans = _kill_one_replica(cluster, model, checkpoint_every=0)
    for (sid, outputs, failure), (transport, chunks) in zip(results, plans):
        if sid in victims:
            assert failure is not None, f"{transport} stream {sid} on the killed replica went on"
            assert failure.status in (404, 4404) and "was lost" in failure.message, failure
            assert str(sid) in failure.message
            assert len(outputs) == 3
        else:
            assert failure is None, f"{transport} stream {sid} (not on the killed replica): {failure}"
            np.testing.assert_allclose(np.concatenate(outputs, axis=1), _whole(model, chunks), atol=TOLERANCE,
                                       rtol=TOLERANCE)


def test_a_killed_replica_with_checkpoints_resumes_its_streams_from_the_last_one(cluster, model):
    victims, results, plans = _kill_one_replica(cluster, model, checkpoint_every=2)
    for (sid, outputs, failure), (transport, chunks) in zip(results, plans):
        if sid in victims:  # checkpoint after chunk 2; chunk 3 was lost with the replica: sent again
            assert failure == [2], f"{transport} stream {sid}: {failure}"
        else:
            assert failure is None, f"{transport} stream {sid} (not on the killed replica): {failure}"
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), _whole(model, chunks), atol=TOLERANCE,
                                   rtol=TOLERANCE, err_msg=f"{transport} stream {sid}")


def test_the_command_deploys_on_a_running_cluster_and_stops_on_sigint(cluster):
    """``lstminfer serve --ray --address ADDR``: deployed, answers, and on SIGINT deletes its app and exits 0."""
    import signal
    import subprocess
    import sys

    port = cluster.rsplit(":", 1)[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "lstminfer", "serve", "--ray", "--replicas", "1", "--port", port,
                             "--address", ray.get_runtime_context().gcs_address], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "listening" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in line
        assert _owner_replicas() == 1
        status, _ = _get(f"{cluster}/v2/models/{MODEL}/ready")
        assert status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert APP_NAME not in serve.status().applications
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
