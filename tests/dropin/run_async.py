"""run_async: several runs in flight, each result handed to a callback with the caller's user data."""
import sys
import threading

import numpy as np
import onnxruntime as ort

model_path, out_path = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


class Results:
    def __init__(self, count):
        self.values = [None] * count
        self.errors = []
        self.left = count
        self.lock = threading.Lock()
        self.done = threading.Event()


def callback(outputs, user_data, err):
    results, index = user_data
    with results.lock:
        if err:
            results.errors.append(err)
        else:
            results.values[index] = outputs[0]
        results.left -= 1
        if results.left == 0:
            results.done.set()


rng = np.random.default_rng(3)
batches = [rng.random((1, 12, 2), dtype=np.float32) for _ in range(4)]
state = np.zeros((1, 1, 32), dtype=np.float32)
results = Results(len(batches))
for i, x in enumerate(batches):
    session.run_async(["y"], {"x": x, "h0": state, "c0": state}, callback, (results, i))
assert results.done.wait(60), "run_async callbacks did not all arrive"

failed = Results(1)
session.run_async(None, {"x": batches[0].astype(np.float64), "h0": state, "c0": state}, callback, (failed, 0))
assert failed.done.wait(60)

np.savez(out_path, ys=np.stack(results.values), errors=np.array(len(results.errors)),
         bad_feed_reported=np.array(len(failed.errors) == 1 and failed.values[0] is None))
