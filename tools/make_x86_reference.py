"""Write tests/data/x86_reference_outputs.npz: the bundled models' outputs on x86-64, which
tests/test_x86_reference_outputs.py compares against on any platform (aarch64 under QEMU has no
onnxruntime to compare with). Regenerate after a change that is meant to change outputs:

    python tools/make_x86_reference.py
"""
from __future__ import annotations

import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import lstminfer  # noqa: E402
import lstminfer.models  # noqa: E402
from lstminfer.sample_inputs import sample_feeds  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "data", "x86_reference_outputs.npz")
# (case name, load arguments): the float kernels, the reference, and the weight-only low precisions
# (their products equal float32 ones on the rounded weights, so they travel across ISAs).
CASES = {"cython": dict(backend="cython"), "reference": dict(backend="reference"),
         "int8": dict(backend="cython", quantize="int8"), "bf16": dict(backend="cython", quantize="bf16")}
TIME, BATCH = 20, 3


def main() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        sys.exit("run this on x86-64: the fixture is what the other architectures are checked against")
    os.environ["LSTMINFER_INT8_SCHEME"] = "weight-only"  # the dynamic scheme's rounding is not portable
    arrays: dict[str, np.ndarray] = {}
    for name in lstminfer.models.available():
        path = lstminfer.models.path(name)
        feeds = sample_feeds(lstminfer.load(path, backend="reference"), time=TIME, batch=BATCH, seed=0)
        for key, value in feeds.items():
            arrays[f"{name}/feed/{key}"] = value
        for case, options in CASES.items():
            model = lstminfer.load(path, **options)
            for out, value in zip(model.get_outputs(), model.run(None, feeds)):
                arrays[f"{name}/{case}/{out.name}"] = np.asarray(value)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {len(arrays)} arrays to {os.path.relpath(FIXTURE, ROOT)}")


if __name__ == "__main__":
    main()
