"""Each papermill parameter of notebooks 02-04 has the default of the code it feeds (one source for defaults)."""
from __future__ import annotations

import ast
import dataclasses
import inspect

import nbformat
import pytest

from conftest import ROOT

from smilekit.learn import evaluate, retrain
from smilekit import settings
from smilekit.runtime import SHIPPED_MODEL
from smilekit.learn.train import TrainConfig


def _dataclass_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def notebook_parameters(name: str) -> dict:
    """{name: value} of the notebook's cell tagged ``parameters`` (plain literals, as papermill wants)."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}


#: notebook -> (the defaults of the code each parameter feeds, parameters only the notebook has: where output goes, what is shown)
CASES = {
    "02-train.ipynb": (lambda: _dataclass_defaults(TrainConfig), {"figures_dir", "input_px"}),
    "03-evaluate.ipynb": (lambda: {**{k: v for k, v in _defaults(evaluate.load_sets).items() if k in ("data_root", "limit")},
                                   "n_mistakes": _defaults(evaluate.worst_mistakes)["k"], "model": SHIPPED_MODEL},
                          {"baseline", "n_saliency", "metrics_out", "figures_dir"}),
    "04-feedback.ipynb": (lambda: _dataclass_defaults(retrain.RetrainConfig), {"metrics_out", "figures_dir"}),
}


def _same(notebook_value, code_value) -> bool:
    if isinstance(code_value, tuple):
        return list(code_value) == notebook_value
    if isinstance(code_value, type(SHIPPED_MODEL)):
        return settings.project_path(notebook_value) == code_value
    return notebook_value == code_value and type(notebook_value) is type(code_value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_parameters_have_the_defaults_of_the_code(name):
    code_defaults, notebook_only = CASES[name][0](), CASES[name][1]
    parameters = notebook_parameters(name)
    unknown = set(parameters) - set(code_defaults) - notebook_only
    assert not unknown, f"{name}: parameters that feed no known default (add them to CASES): {sorted(unknown)}"
    wrong = {k: (v, code_defaults[k]) for k, v in parameters.items() if k in code_defaults and not _same(v, code_defaults[k])}
    assert not wrong, f"{name}: notebook value vs code default: {wrong}"


def test_the_comparison_catches_a_disagreement():
    assert not _same("outputs/smilenet.pt", TrainConfig.out)
    assert not _same(80.0, 80) and not _same(["celeba-subset"], ("smilesmiled", "celeba-subset"))
    assert _same("smilekit/weights/model.pt", SHIPPED_MODEL)
