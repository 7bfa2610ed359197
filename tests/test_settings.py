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
    monkeypatch.delenv("SMILEKIT_MAX_SESSIONS", raising=False)
    monkeypatch.delenv("SMILEKIT_POOL_SIZE", raising=False)
    monkeypatch.delenv("SMILEKIT_MAX_STARTING", raising=False)
    cores = len(os.sched_getaffinity(0))
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert settings.max_sessions() == max(1, min(settings.SESSIONS_PER_CORE * cores,
                                                 (memory_mb - settings.RESERVED_MB) // settings.SESSION_MB))
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
