"""Settings from the environment: each read when asked for, with defaults inside the project."""
from __future__ import annotations

import os
from pathlib import Path

from smilekit import settings
from smilekit.runtime import SHIPPED_MODEL, default_model_path

ROOT = Path(__file__).resolve().parent.parent


def test_project_path_keeps_absolute_paths_and_anchors_relative_ones(tmp_path):
    assert settings.ROOT == ROOT
    assert settings.project_path(tmp_path) == tmp_path
    assert settings.project_path("outputs/x.json") == ROOT / "outputs" / "x.json"


def test_defaults_are_inside_the_project(monkeypatch):
    for variable in ("SMILEKIT_DATA", "SMILEKIT_CACHE", "SMILEKIT_DB_URL", "SMILEKIT_MODEL", "SMILEKIT_MODELS_DIR", "SMILEKIT_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    assert settings.data_root() == ROOT / "data"
    assert settings.cache_dir() == ROOT / "outputs" / "cache"
    assert settings.db_url() == f"sqlite:///{ROOT / 'outputs' / 'feedback.db'}"
    assert settings.models_dir() == ROOT / "outputs" / "models"
    assert settings.model_path() is None
    assert settings.inference_threads() == 1


def test_environment_wins_and_is_read_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("SMILEKIT_DATA", str(tmp_path / "faces"))
    monkeypatch.setenv("SMILEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SMILEKIT_DB_URL", "postgresql+psycopg2://u@h/db")
    monkeypatch.setenv("SMILEKIT_MODEL", str(tmp_path / "m.pt"))
    monkeypatch.setenv("SMILEKIT_THREADS", "2")
    assert settings.data_root() == tmp_path / "faces"
    assert settings.cache_dir() == tmp_path / "cache"
    assert settings.db_url() == "postgresql+psycopg2://u@h/db"
    assert settings.model_path() == tmp_path / "m.pt"
    assert settings.inference_threads() == 2


def test_models_folder_follows_argument_then_environment_from_the_project_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", "somewhere/models")
    assert settings.models_dir() == ROOT / "somewhere" / "models"
    assert settings.models_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(tmp_path / "promoted"))
    (tmp_path / "promoted").mkdir()
    assert default_model_path() == SHIPPED_MODEL  # nothing promoted yet
    (tmp_path / "promoted" / "new.pt").write_bytes(b"x")
    assert default_model_path() == tmp_path / "promoted" / "new.pt"  # the app serves what was promoted there


def test_session_limit_and_pool_come_from_the_environment_or_the_machine(monkeypatch):
    for variable in ("SMILEKIT_MAX_SESSIONS", "SMILEKIT_POOL_SIZE", "SMILEKIT_MAX_STARTING", "SMILEKIT_REPLICAS"):
        monkeypatch.delenv(variable, raising=False)
    cores = len(os.sched_getaffinity(0))
    physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert 0 < settings.memory_mb() <= physical_mb
    assert settings.max_sessions() == max(1, (settings.memory_mb() - settings.RESERVED_MB) // settings.SESSION_MB)
    assert settings.pool_size() == 1
    assert settings.max_starting() == settings.STARTING_PER_CORE * cores
    monkeypatch.setenv("SMILEKIT_MAX_STARTING", "5")
    assert settings.max_starting() == 5
    monkeypatch.setenv("SMILEKIT_MAX_SESSIONS", "3")
    monkeypatch.setenv("SMILEKIT_POOL_SIZE", "4")
    assert settings.max_sessions() == 3
    assert settings.pool_size() == 4
    monkeypatch.setenv("SMILEKIT_MAX_SESSIONS", "0")
    assert settings.max_sessions() == 1  # a server that admits nobody would be a broken one


def test_the_session_limit_follows_memory_not_cores(monkeypatch):
    monkeypatch.delenv("SMILEKIT_MAX_SESSIONS", raising=False)
    monkeypatch.delenv("SMILEKIT_REPLICAS", raising=False)
    monkeypatch.setattr(settings, "_physical_memory", lambda: 24 * 2**30)  # a 2-core, 24 GB machine
    monkeypatch.setattr(settings, "_cgroup_memory_limit", lambda: None)
    monkeypatch.setattr(settings, "_cores", lambda: 2)
    assert settings.memory_mb() == 24 * 1024
    assert settings.max_sessions() == (24 * 1024 - settings.RESERVED_MB) // settings.SESSION_MB == 78  # not 10 a core
    monkeypatch.setattr(settings, "_cgroup_memory_limit", lambda: 64 * 2**30)  # a limit above the machine's memory
    assert settings.max_sessions() == 78
    monkeypatch.setattr(settings, "_cgroup_memory_limit", lambda: 4 * 2**30)  # a 4 GB container
    assert settings.max_sessions() == (4 * 1024 - settings.RESERVED_MB) // settings.SESSION_MB == 10
    monkeypatch.setenv("SMILEKIT_REPLICAS", "2")  # two servers on those 4 GB: each admits for its half
    assert settings.memory_mb() == 2048
    assert settings.max_sessions() == (2048 - settings.RESERVED_MB) // settings.SESSION_MB == 3
    monkeypatch.setattr(settings, "_cgroup_memory_limit", lambda: 2**30)
    assert settings.max_sessions() == 1  # memory really short: one session, the rest see the busy page


def _cgroups(tmp_path, membership: str, limits: dict[str, str]):
    """A fake /sys/fs/cgroup under ``tmp_path`` with ``limits`` ({file path: content}) and /proc/self/cgroup."""
    for path, value in limits.items():
        (tmp_path / "cg" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / path).write_text(value + "\n")
    (tmp_path / "self-cgroup").write_text(membership)
    return settings._cgroup_memory_limit(tmp_path / "cg", tmp_path / "self-cgroup")


def test_a_containers_memory_limit_is_found_in_cgroup_v2_and_v1(tmp_path):
    assert _cgroups(tmp_path / "a", "0::/\n", {"memory.max": "max"}) is None  # v2, no limit
    assert _cgroups(tmp_path / "b", "0::/\n", {"memory.max": str(12 * 2**30)}) == 12 * 2**30  # v2 in a container
    assert _cgroups(tmp_path / "c", "0::/kubepods/pod1/c1\n", {"kubepods/pod1/memory.max": str(10 * 2**30),
                                                                "kubepods/pod1/c1/memory.max": "max"}) == 10 * 2**30  # the pod's
    v1 = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
    assert _cgroups(tmp_path / "d", v1, {"memory/memory.limit_in_bytes": "9223372036854771712"}) is None  # v1, no limit
    assert _cgroups(tmp_path / "e", v1, {"memory/memory.limit_in_bytes": str(6 * 2**30)}) == 6 * 2**30  # v1 container
    assert _cgroups(tmp_path / "f", v1, {"memory/docker/abc/memory.limit_in_bytes": str(3 * 2**30),
                                         "memory/memory.limit_in_bytes": str(8 * 2**30)}) == 3 * 2**30  # the tightest
    assert settings._cgroup_memory_limit(tmp_path / "none", tmp_path / "no-such-file") is None  # not Linux
