"""Notebook hygiene: parameters cells survive nbdev_clean, experiment notebooks are papermill-ready, library notebooks
keep only small, clean outputs and read as lessons (one definition per export cell)."""
import configparser
import copy
import json
import re
import statistics
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


MAX_CELL_TEXT = 2_000        # characters of one kind of text output (stream, text/plain, text/html, ...) in one cell
MAX_IMAGE = 60_000           # characters of one image as stored (base64 for PNG/JPEG)
MAX_NOTEBOOK = 300_000       # bytes of a notebook file
NOISE = {"/work/": "an absolute path of this machine", ".venv": "the virtual environment's path",
         "site-packages": "an installed package's path", "Traceback": "a traceback",
         "IProgress": "a tqdm/ipywidgets warning", "TqdmWarning": "a tqdm warning", "it/s]": "a progress bar"}


def output_texts(cell) -> dict[str, int]:
    """Characters per kind of text output of a code cell (streams by name, display data by MIME type)."""
    sizes: dict[str, int] = {}
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            kind, text = f"stream:{o['name']}", o["text"]
            sizes[kind] = sizes.get(kind, 0) + len(text if isinstance(text, str) else "".join(text))
        for mime, data in o.get("data", {}).items():
            if not mime.startswith("image/"):
                sizes[mime] = sizes.get(mime, 0) + len(data if isinstance(data, str) else json.dumps(data))
    return sizes


def output_images(cell) -> list[int]:
    """Stored size of every image output of a code cell."""
    return [len(data if isinstance(data, str) else "".join(data)) for o in cell.get("outputs", [])
            for mime, data in o.get("data", {}).items() if mime.startswith("image/")]


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_saved_outputs_are_small_and_clean(nb):
    """Library notebooks may keep small outputs (a number, a table head, a small figure) so the page teaches
    without running; a cap on their size and on noise replaces the old ban."""
    assert nb.stat().st_size <= MAX_NOTEBOOK, f"{nb.name}: {nb.stat().st_size} bytes, more than {MAX_NOTEBOOK}"
    d = nbformat.read(nb, as_version=4)
    for i, c in enumerate(d.cells):
        if c.cell_type != "code" or not c.get("outputs"):
            continue
        big = {k: n for k, n in output_texts(c).items() if n > MAX_CELL_TEXT}
        assert not big, f"{nb.name} cell {i}: text outputs over {MAX_CELL_TEXT} characters {big}; show a head or a summary"
        images = [n for n in output_images(c) if n > MAX_IMAGE]
        assert not images, f"{nb.name} cell {i}: images of {images} characters, more than {MAX_IMAGE}; draw it smaller"
        errors = [o.get("ename") for o in c.outputs if o["output_type"] == "error"]
        assert not errors, f"{nb.name} cell {i}: saved error output {errors}"
        text = json.dumps(c.outputs)
        noise = [why for pattern, why in NOISE.items() if pattern in text]
        assert not noise, f"{nb.name} cell {i}: output holds {', '.join(noise)}; adjust the check cell that prints it"


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_notebooks_have_no_outputs(nb):
    """Executed experiment notebooks are build outputs (results/<profile>/notebooks/); the sources stay clean."""
    d = nbformat.read(nb, as_version=4)
    with_out = [i for i, c in enumerate(d.cells) if c.cell_type == "code" and c.get("outputs")]
    assert not with_out, f"{nb.name}: cells {with_out} have saved outputs"


LIBRARY = [p for p in NBS if p.name[:2].isdigit() and int(p.name[:2]) < 20]    # library: 00_ to 19_
EXPORT = re.compile(r"^#\|\s*export[si]?\b", re.M)


def export_cells(nb: Path) -> list[int]:
    """Lines of every export cell of a notebook (every line of the cell counted, directives included)."""
    d = nbformat.read(nb, as_version=4)
    return [len(c.source.splitlines()) for c in d.cells if c.cell_type == "code" and EXPORT.search(c.source)]


def test_library_notebooks_read_as_lessons():
    """One definition per export cell, followed by the cell that shows it, as in fastcore's `01_basics`:
    over the library notebooks (00-19) the median export cell is at most 12 lines, at most 5 are over
    40 lines (a single long definition), and at least 8 notebooks keep small outputs."""
    lines = {nb.name: export_cells(nb) for nb in LIBRARY}
    every = [n for ns in lines.values() for n in ns]
    long = sorted(((n, name) for name, ns in lines.items() for n in ns if n > 40), reverse=True)
    with_outputs = [nb.name for nb in LIBRARY
                    if any(c.get("outputs") for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")]
    median = statistics.median(every)
    summary = (f"{len(every)} export cells in {len(LIBRARY)} notebooks: median {median} lines, {len(long)} over 40 "
               f"({', '.join(f'{name} {n}' for n, name in long[:12])}); {len(with_outputs)} notebooks with outputs")
    assert median <= 12 and len(long) <= 5 and len(with_outputs) >= 8, summary


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
