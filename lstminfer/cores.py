"""How many cores this process may use: the one place that counts them.

The smallest of the CPU affinity mask (``os.sched_getaffinity``, what ``taskset`` or a
cpuset gives), the cgroup CPU limit (a container's ``--cpus``: cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up) and the CPU count. Thread counts
above it only compete for the same cores.
"""
from __future__ import annotations

import math
import os

CGROUP_ROOT = "/sys/fs/cgroup"


def available_cores(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Cores this process may run on, at least 1 (``cgroup_root``/``proc_cgroup``: for tests)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def cgroup_cpu_limit(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup and its ancestors, in cores, or None where there is none."""
    limits = [q for q in (_v2_limit(d) for d in _cgroup_dirs(cgroup_root, proc_cgroup, "")) if q is not None]
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        limits += [q for q in (_v1_limit(d) for d in _cgroup_dirs(cgroup_root, proc_cgroup, controller))
                   if q is not None]
    return min(limits) if limits else None


def _cgroup_dirs(root: str, proc_cgroup: str, controller: str) -> list[str]:
    """The cgroup's directory under ``root`` (v2: ``root``; v1: ``root/controller``) and its ancestors."""
    base = os.path.join(root, controller) if controller else root
    own = "/"
    try:
        with open(proc_cgroup) as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                mine = set(names.split(",")) >= set(controller.split(",")) if controller else names == ""
                if mine:
                    own = path
    except (OSError, ValueError):
        pass
    dirs, path = [], own.strip("/")
    while True:
        dirs.append(os.path.join(base, path) if path else base)
        if not path:
            return dirs
        path = os.path.dirname(path)


def _v2_limit(directory: str) -> float | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" (µs), or "max PERIOD" for no limit."""
    text = _read(os.path.join(directory, "cpu.max"))
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def _v1_limit(directory: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
