"""`--workers`' default: the pod's CPU limit, read from its cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.router.runtime.supervisor import cpu_limit, default_workers

IN_A_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}


def cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize(("cpu_max", "workers"), [("200000 100000", 2), ("150000 100000", 1), ("50000 100000", 1)])
def test_a_pod_runs_as_many_workers_as_whole_cores_in_its_limit(tmp_path: Path, cpu_max: str, workers: int) -> None:
    assert default_workers(IN_A_POD, cgroup_v2(tmp_path, cpu_max)) == workers


def test_without_a_limit_or_outside_kubernetes_one_worker(tmp_path: Path) -> None:
    assert default_workers(IN_A_POD, cgroup_v2(tmp_path, "max 100000")) == 1
    assert default_workers({}, cgroup_v2(tmp_path, "400000 100000")) == 1
    assert default_workers(IN_A_POD, tmp_path / "missing") == 1


def test_cgroup_v1_quota_and_period(tmp_path: Path) -> None:
    assert cpu_limit(cgroup_v1(tmp_path, 300000, 100000)) == 3.0
    assert cpu_limit(cgroup_v1(tmp_path / "unlimited", -1, 100000)) is None
