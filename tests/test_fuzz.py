"""The fuzz targets of tools/fuzz/ (load, hostile feeds, state blobs), each run briefly under atheris
with a fixed seed from the committed seed corpus: any finding (an exception outside lstminfer.errors, a
result differing from the reference backend, a crash, a hang past 10 s) fails the test.
The long campaign (>= 10^6 executions) and its figures: benchmarks/RESULTS.md, "Fuzzing"."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="the fuzz extra (pip install -e '.[fuzz]') is not installed")

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("LSTMINFER_FUZZ_SECONDS", "15"))


@pytest.mark.parametrize("target,seed", [("load", 11), ("feeds", 12), ("state", 13)])
def test_fuzz_target_finds_nothing(target, seed, tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "fuzz" / "run.py"), target, f"-seed={seed}",
           f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=3072", "-print_final_stats=1"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "FUZZ_WORK": str(tmp_path)},
                          capture_output=True, text=True, timeout=SECONDS + 120)
    log = done.stdout + done.stderr
    findings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    tail = "\n".join(line for line in log.splitlines() if "Instrumenting" not in line)[-4000:]
    assert done.returncode == 0 and not findings, f"fuzz target '{target}' found {findings}:\n{tail}"
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", log).group(1))
    assert runs > 100, f"only {runs} executions in {SECONDS} s:\n{tail}"
