"""The package's folders are its design: each layer imports only the layers below it (pyproject.toml's contract)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def test_each_layer_imports_only_the_layers_below_it():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.is_file():
        lint = shutil.which("lint-imports")
    if not lint:
        pytest.fail("lint-imports (import-linter, a test dependency) is not installed")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_module_is_left_beside_the_subpackages():
    """The top level holds only the entry points and what every layer shares."""
    top = sorted(p.stem for p in (ROOT / "smilekit").glob("*.py"))
    assert top == ["__init__", "__main__", "calibration", "cli", "predict", "runtime", "settings"], top
