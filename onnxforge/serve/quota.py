"""CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's `--cpus`), which
onnxruntime ignores (it sizes its pool to the host)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in CPUs (v2 cpu.max, else v1 cfs_quota/cfs_period), None when unlimited or absent."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for base in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((base / "cpu.cfs_quota_us").read_text())
            period_us = int((base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    q = cgroup_cpus(root)
    return max(1, min(n, math.floor(q))) if q else n


def threads_per_worker(workers: int, root: Path = Path("/sys/fs/cgroup")) -> int:
    """onnxruntime intra-op threads per worker process: the CPUs the quota allows, shared among the workers."""
    return max(1, available_cpus(root) // max(1, workers))
