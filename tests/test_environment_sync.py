"""environment.yml, binder/ and pyproject.toml must list the same pinned packages and Python."""
from __future__ import annotations

import os
import re
import tomllib

import pytest

from conftest import ROOT

yaml = pytest.importorskip("yaml")

EXTRAS = ("learn", "notebooks", "test")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _as_dict(requirements) -> dict[str, str]:
    """{normalised name: requirement without spaces}, skipping pip options and the project itself."""
    out = {}
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        out[_name(line)] = line.replace(" ", "")
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def expected() -> dict[str, str]:
    """pyproject.toml's runtime dependencies plus the learn, notebooks and test extras."""
    project = _pyproject()
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"].get(extra, [])
    return _as_dict(requirements)


def _environment_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_section(environment: dict) -> list[str]:
    sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs one pip: list"
    return sections[0]


def test_pyproject_pins_every_package():
    unpinned = [r for r in expected().values() if "==" not in r]
    assert not unpinned, f"pyproject.toml should pin exact versions: {unpinned}"


def test_environment_yml_matches_pyproject():
    environment = _environment_yml()
    assert environment["channels"] == ["conda-forge"]
    assert _as_dict(_pip_section(environment)) == expected()
    assert "-e ." in _pip_section(environment), "environment.yml should install the project itself"


def test_binder_requirements_match_pyproject():
    assert _as_dict((ROOT / "binder" / "requirements.txt").read_text().splitlines()) == expected()


def test_readme_setup_installs_the_pyproject_set():
    """The README's commands run scripts/setup, which installs exactly pyproject.toml's pins (no list of its own)."""
    readme = (ROOT / "README.md").read_text()
    assert "scripts/setup && scripts/serve" in readme and "scripts/setup --test && scripts/test" in readme
    setup = (ROOT / "scripts" / "setup").read_text()
    assert re.search(r'quiet_pip -e "\.\$extras"', setup) and "pip install -q \"$@\"" in setup
    extras = _pyproject()["optional-dependencies"]
    assert 'extras="[learn]"' in setup and 'extras="[learn,test]"' in setup and {"learn", "test"} <= extras.keys()
    assert "torch" in {_name(r) for r in extras["learn"]}, "the learn extra brings torch (training, saliency)"
    assert "onnxruntime" in {_name(r) for r in _pyproject()["dependencies"]}
    assert not re.search(r"(pip install|quiet_pip)[^\n]*==", setup), "scripts/setup must not pin packages of its own"


def test_python_versions_agree():
    conda_python = next(d for d in _environment_yml()["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = conda_python.split("=", 1)[1]
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == f"python-{version}"
    minimum = re.search(r">=\s*(\d+\.\d+)", _pyproject()["requires-python"]).group(1)
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_binder_postbuild_installs_the_project():
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    assert re.search(r"pip install .*-e \.", post_build.read_text())


def test_the_cpu_torch_index_is_used_everywhere():
    index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert index in _pip_section(_environment_yml())
    assert index in (ROOT / "binder" / "requirements.txt").read_text().splitlines()


def _installed_closure(requirements) -> set[str]:
    """Names of the packages these requirements pull in without extras, following the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_the_app_install_without_extras_has_a_kernel_to_run_the_app():
    """`scripts/setup` (no extras) must give Voilà a Python kernel: voila itself does not install ipykernel."""
    closure = _installed_closure(_pyproject()["dependencies"])
    assert {"voila", "ipywidgets", "ipykernel"} <= closure
