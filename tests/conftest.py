"""Shared fixtures: the real face data beside the checkout, temporary Jupyter state."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SMILEKIT_TEST_DATA", ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real face data not found at {path} (put the shared data beside the checkout or set SMILEKIT_TEST_DATA)")
    return path


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data root holding smilesmiled/ and celeba-subset/."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def smilesmiled_dir(shared_data) -> Path:
    return _require(shared_data / "smilesmiled")


@pytest.fixture(scope="session")
def celeba_dir(shared_data) -> Path:
    return _require(shared_data / "celeba-subset")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Keep caches, databases and Jupyter state out of the project and the home folder."""
    state = tmp_path_factory.getbasetemp() / "state"
    for var, sub in (("SMILEKIT_CACHE", "cache"), ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (state / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(state / sub))
    monkeypatch.setenv("SMILEKIT_MODELS_DIR", str(state / "no-promoted-models"))
    monkeypatch.delenv("SMILEKIT_MODEL", raising=False)
    monkeypatch.delenv("SMILEKIT_DB_URL", raising=False)
