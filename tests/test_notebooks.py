"""Notebook hygiene: parameters cells survive nbdev_clean, experiment notebooks are papermill-ready."""
import configparser
import copy
from pathlib import Path

import nbformat
import pytest

from urbancross.experiment import experiment_notebooks, literal_parameters, parameters_cells

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
EXPERIMENTS = [p for p in NBS if p.name[:2].isdigit() and int(p.name[:2]) >= 20]   # experiments: 20_ up


def settings():
    cp = configparser.ConfigParser(delimiters=["="])
    cp.read(ROOT / "settings.ini")
    return cp["DEFAULT"]


def test_there_are_experiment_notebooks():
    assert EXPERIMENTS, "no experiment notebooks (nbs/2x_*.ipynb) found"
    assert experiment_notebooks(ROOT / "nbs") == EXPERIMENTS


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_has_exactly_one_literal_parameters_cell(nb):
    assert len(parameters_cells(nb)) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"
    params = literal_parameters(nb)
    assert "profile" in params and params["profile"] in ("smoke", "paper")


def test_settings_keep_tags_and_flags():
    s = settings()
    assert s["allowed_cell_metadata_keys"].split() == ["tags"]
    assert {"notest", "slow", "gpu"} <= set(s["tst_flags"].split())


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_nbdev_clean_keeps_parameters_tag(nb, monkeypatch):
    """nbdev_clean with our settings must not strip papermill's tag (else injected parameters are lost)."""
    from nbdev.clean import clean_nb
    monkeypatch.chdir(ROOT)
    d = copy.deepcopy(nbformat.read(nb, as_version=4))
    clean_nb(d, allowed_cell_metadata_keys=settings()["allowed_cell_metadata_keys"].split())
    tagged = [c for c in d["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_library_notebooks_have_no_outputs(nb):
    """Library notebooks are saved clean; experiment outputs live in outputs/, results/, figures/."""
    d = nbformat.read(nb, as_version=4)
    with_out = [i for i, c in enumerate(d.cells) if c.cell_type == "code" and c.get("outputs")]
    assert not with_out, f"{nb.name}: cells {with_out} have saved outputs"


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_nbdev_test_skips_experiments(nb):
    """nbdev must parse `skip_exec: true` from the first markdown cell, so `make test` never runs an experiment.

    A bullet list elsewhere in that cell makes nbdev read it as YAML and silently drop `skip_exec`.
    """
    from fastcore.basics import str2bool
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    fm = getattr(NBProcessor(nb, procs=FrontmatterProc, process=True).nb, "frontmatter_", {})
    assert str2bool(fm.get("skip_exec", False)), f"{nb.name}: nbdev does not see skip_exec (front matter {fm})"
