"""Run one fuzz target under atheris (libFuzzer): coverage of lstminfer's Python code guides it.

    python tools/fuzz/run.py load  -runs=100000 -seed=1          # the seed corpus: tools/fuzz/corpus/load
    python tools/fuzz/run.py feeds -max_total_time=600
    python tools/fuzz/run.py state -runs=1000000 -timeout=5
    python tools/fuzz/run.py --make-corpus                        # rewrite the seed corpus

Everything after the target name goes to libFuzzer. New inputs libFuzzer finds go to a scratch
copy of the corpus (``$FUZZ_WORK`` or a temporary folder), so the committed seeds stay small; a
finding is written there as crash-*/timeout-* and the process exits non-zero.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]  # the targets, and this checkout's lstminfer


def make_corpus() -> None:
    import targets

    for name, data in targets.small_models().items():
        _write(targets.CORPUS / "load" / f"{name}.onnx", data)
    for name, data in targets.state_blobs().items():
        _write(targets.CORPUS / "state" / f"{name}.bin", data)
    import random
    rnd = random.Random(0)
    for i in range(16):
        _write(targets.CORPUS / "feeds" / f"seed{i:02d}", bytes(rnd.randrange(256) for _ in range(64 + 16 * i)))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main(argv: list[str]) -> None:
    if argv[1:2] == ["--make-corpus"]:
        make_corpus()
        return
    if len(argv) < 2 or argv[1] not in ("load", "feeds", "state"):
        sys.exit(__doc__)
    import atheris

    with atheris.instrument_imports(include=["lstminfer"]):
        import lstminfer  # noqa: F401  (instrumented for coverage)
        import lstminfer.ops.recurrent, lstminfer.streaming, lstminfer.state_blob  # noqa: E401,F401
    import targets

    name = argv[1]
    work = Path(os.environ.get("FUZZ_WORK") or tempfile.mkdtemp(prefix=f"lstminfer-fuzz-{name}-"))
    corpus = work / "corpus"
    if not corpus.exists():
        shutil.copytree(targets.CORPUS / name, corpus)
    args = [argv[0], *argv[2:], f"-artifact_prefix={work}/", str(corpus)]
    if not any(a.startswith("-timeout=") for a in args):
        args.insert(1, "-timeout=10")
    print(f"fuzz target '{name}': corpus {corpus}", flush=True)
    atheris.Setup(args, targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
