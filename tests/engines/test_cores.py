"""Thread defaults come from the cores the process may use, not the machine's count."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiml.engines import cores
from aiml.engines.cores import thread_budget, usable_cores


def test_affinity_and_a_cgroup_quota_cap_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert usable_cores(tmp_path) == 6  # no cgroup files: affinity alone
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert usable_cores(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == 6
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {3})
    assert usable_cores(tmp_path) == 1  # taskset to one core


def test_cgroup_v1_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(8)))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 3


def test_torch_and_llama_cpp_never_both_take_every_core() -> None:
    assert thread_budget(["llamacpp", "transformers"], cores=4) == {
        "llamacpp": 4,
        "transformers": 2,
        "whisper": 4,  # speech and OCR come in bursts, one request at a time per model
        "onnx": 4,
    }
    assert thread_budget(["transformers"], cores=4)["transformers"] == 4
    assert thread_budget(["llamacpp", "transformers"], cores=1)["transformers"] == 1
