"""The cores a process may use (lstminfer.cores): affinity and cgroup CPU limits, read from fake
cgroup trees, and the CPU features this architecture reports."""
from __future__ import annotations

import os
import platform

import pytest

from lstminfer import cores
from lstminfer.session_options import machine_cores


def _tree(tmp_path, files: dict[str, str], own: str = "0::/\n"):
    for rel, text in files.items():
        path = tmp_path / "cg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "self_cgroup").write_text(own)
    return str(tmp_path / "cg"), str(tmp_path / "self_cgroup")


def _affinity():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_no_cgroup_files_means_the_affinity(tmp_path):
    root, own = _tree(tmp_path, {})
    assert cores.cgroup_cpu_limit(root, own) is None
    assert cores.available_cores(root, own) == _affinity()


@pytest.mark.parametrize("text, expected", [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5)])
def test_cgroup_v2_cpu_max(tmp_path, text, expected):
    root, own = _tree(tmp_path, {"cpu.max": text + "\n"})
    assert cores.cgroup_cpu_limit(root, own) == expected


def test_cgroup_v2_limit_rounds_up_and_caps_the_affinity(tmp_path):
    root, own = _tree(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cores.available_cores(root, own) == 1  # half a core: one thread
    root, own = _tree(tmp_path, {"cpu.max": "10000000 100000\n"})  # 100 cores: the affinity decides
    assert cores.available_cores(root, own) == _affinity()


def test_cgroup_v2_nested_group_takes_the_smallest_ancestor_limit(tmp_path):
    root, own = _tree(tmp_path, {"cpu.max": "max 100000", "a/cpu.max": "100000 100000", "a/b/cpu.max": "300000 100000"},
                      own="0::/a/b\n")
    assert cores.cgroup_cpu_limit(root, own) == 1.0


@pytest.mark.parametrize("quota, expected", [("-1", None), ("200000", 2.0)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, expected):
    root, own = _tree(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": quota, "cpu,cpuacct/cpu.cfs_period_us": "100000"},
                      own="4:cpu,cpuacct:/\n")
    assert cores.cgroup_cpu_limit(root, own) == expected


def test_malformed_files_are_no_limit(tmp_path):
    root, own = _tree(tmp_path, {"cpu.max": "garbage"})
    assert cores.cgroup_cpu_limit(root, own) is None


def test_machine_cores_is_the_one_count():
    assert machine_cores() == cores.available_cores()
    assert 1 <= machine_cores() <= (os.cpu_count() or 1)


def test_cpu_features_are_this_architectures():
    _cpu = pytest.importorskip("lstminfer._native._cpu")
    names = set(_cpu.features())
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        assert _cpu.arch() == "x86_64" and {"avx2", "avx512vnni"} <= names
    elif machine in ("aarch64", "arm64"):
        assert _cpu.arch() == "aarch64" and names == {"asimd", "fp16", "dotprod", "i8mm", "bf16", "sve"}
        assert _cpu.features()["asimd"]  # every armv8-a Linux CPU has NEON
