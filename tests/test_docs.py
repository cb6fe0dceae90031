"""Docs: README.md is what nbs/index.ipynb renders to; the site builder stages the right pages; the link checker
finds broken links. The full site is built and checked by `make docs-check` (CI), not here."""
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "nbs" / "index.ipynb"


def load(name):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


make_readme, build, check_links = load("make_readme"), load("build"), load("check_links")


def write_nb(path, cells):
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell


# --- README <- nbs/index.ipynb -------------------------------------------------------------------

def test_readme_is_what_index_renders_to():
    want = make_readme.render_readme(INDEX)
    have = (ROOT / "README.md").read_text(encoding="utf-8")
    assert have == want, "README.md differs from nbs/index.ipynb: edit the notebook, then run `python docs/make_readme.py`"


def test_index_is_the_readme_source_and_no_experiment():
    from urbancross.experiment import experiment_notebooks, parameters_cells
    ini = (ROOT / "settings.ini").read_text()
    assert "readme_nb = index.ipynb" in ini
    assert parameters_cells(INDEX) == []
    assert INDEX not in experiment_notebooks(ROOT / "nbs")
    nb = nbformat.read(INDEX, as_version=4)
    assert all(c.cell_type == "markdown" or "#| notest" in c.source for c in nb.cells), \
        "index.ipynb code cells must be `#| notest` (nbdev_test must not run the README)"
    text = make_readme.render_readme(INDEX)
    for section in ("## Two commands", "## Layout", "## Results (smoke profile, as measured)", "## Profiles", "## Security"):
        assert f"\n{section}\n" in text, section


def test_render_readme_known_answer(tmp_path):
    nb = write_nb(tmp_path / "index.ipynb", [
        md("# Title\n\nIntro.\n"), code("#| hide\nsecret = 1"), md(""), code("#| notest\nprint('hi')"),
        nbformat.v4.new_raw_cell("raw"), md("## Part\n\n| a |\n|---|\n| 1 |")])
    assert make_readme.render_readme(nb) == (make_readme.HEADER + "\n\n# Title\n\nIntro.\n\n```python\nprint('hi')\n```"
                                             "\n\n## Part\n\n| a |\n|---|\n| 1 |\n")


def test_make_readme_check_and_write(tmp_path, capsys):
    nb = write_nb(tmp_path / "index.ipynb", [md("# T")])
    readme = tmp_path / "README.md"
    assert make_readme.main(["--index", str(nb), "--readme", str(readme), "--check"]) == 1   # missing
    assert make_readme.main(["--index", str(nb), "--readme", str(readme)]) == 0
    assert readme.read_text() == make_readme.HEADER + "\n\n# T\n"
    assert make_readme.main(["--index", str(nb), "--readme", str(readme), "--check"]) == 0
    readme.write_text(readme.read_text() + "hand edit\n")
    assert make_readme.main(["--index", str(nb), "--readme", str(readme), "--check"]) == 1
    assert "docs/make_readme.py" in capsys.readouterr().err


def test_render_readme_bad_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        make_readme.render_readme(tmp_path / "nope.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.ipynb: not a readable notebook"):
        make_readme.render_readme(bad)
    with pytest.raises(ValueError, match="empty.ipynb: no markdown or code cell"):
        make_readme.render_readme(write_nb(tmp_path / "empty.ipynb", [code("#| hide\nx = 1")]))


# --- staging the site ------------------------------------------------------------------------------

def test_nbdev_view_drops_directives_hidden_cells_and_front_matter():
    nb = nbformat.v4.new_notebook(cells=[
        code("#| default_exp core"), md("# T\n\n> summary\n\n- skip_exec: true\n\nProse.\n- a list item"),
        code("#| export\ndef f(): pass"), code("#| hide\nx = 1"), md("- order: 2 stays (not the first cell)")])
    v = build.nbdev_view(nb)
    assert [c.source for c in v.cells] == ["# T\n\n> summary\n\nProse.\n- a list item", "def f(): pass",
                                           "- order: 2 stays (not the first cell)"]
    assert len(nb.cells) == 5   # the input is not changed


def fake_repo(tmp_path, executed: bool):
    """A repository with an index, a library notebook (exports urbancross.metrics) and one experiment."""
    root = tmp_path / "repo"
    write_nb(root / "nbs" / "index.ipynb", [md("# Front\n\nSee [the data notes](data/README.md).")])
    write_nb(root / "nbs" / "05_metrics.ipynb", [code("#| default_exp metrics"), md("# Metrics\n\nProse.")])
    params = code('profile = "smoke"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    exp = [md("# An experiment\n\n- skip_exec: true\n\nWhat it does."), params, code("1 + 1")]
    write_nb(root / "nbs" / "20_within_domain.ipynb", exp)
    (root / "data").mkdir()
    (root / "data" / "README.md").write_text("# Data\n\nNotes.\n")
    if executed:
        done = [md(exp[0].source), params, code("1 + 1")]
        done[2].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
        write_nb(root / "results" / "smoke" / "notebooks" / "20_within_domain.ipynb", done)
    return root


@pytest.mark.parametrize("executed", [True, False])
def test_stage_writes_pages_api_and_the_missing_note(tmp_path, executed):
    root = fake_repo(tmp_path, executed)
    src = tmp_path / "src"
    (src / "nbs").mkdir(parents=True)
    (src / "nbs" / "99_removed.ipynb").write_text("{}")   # a stale page is removed
    pages = build.stage("smoke", None, src, root)
    assert [(p.name, p.kind, p.module, p.executed) for p in pages] == [
        ("nbs/05_metrics", "library", "urbancross.metrics", None), ("nbs/20_within_domain", "experiment", None, executed)]
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == [
        "data/README.md", "index.ipynb", "nbs/05_metrics.ipynb", "nbs/20_within_domain.ipynb"]
    lib = nbformat.read(src / "nbs" / "05_metrics.ipynb", as_version=4)
    assert lib.cells[-1].source.startswith("## API reference: `urbancross.metrics`")
    assert ".. automodule:: urbancross.metrics\n   :members:" in lib.cells[-1].source
    ex = nbformat.read(src / "nbs" / "20_within_domain.ipynb", as_version=4)
    assert ex.cells[0].source == "# An experiment\n\nWhat it does."
    note = ex.cells[1].source
    if executed:
        assert note.startswith("```{note}") and "results/smoke/notebooks/20_within_domain.ipynb" in note
        assert ex.cells[-1].outputs[0]["data"]["text/plain"] == "2"
    else:
        assert note.startswith("```{warning}") and "without outputs" in note
        assert not ex.cells[-1].get("outputs")
    toc = nbformat.read(src / "index.ipynb", as_version=4).cells[-1].source
    assert "05_metrics: Metrics <nbs/05_metrics>" in toc and "20_within_domain: An experiment <nbs/20_within_domain>" in toc
    assert "data/README" in toc


def test_api_plan_links_reexported_names_instead_of_documenting_them_twice():
    pages = [build.Page(f"nbs/{n}", "", "library", Path(), m) for n, m in
             [("02a_embedded_scenes", "urbancross.embedded.scenes"), ("02b_embedded_render", "urbancross.embedded.render"),
              ("02c_embedded_captions", "urbancross.embedded.captions"), ("02d_embedded_build", "urbancross.embedded.build"),
              ("02e_embedded_package", "urbancross.embedded")]]
    own, elsewhere = build.api_plan("urbancross.embedded", pages)
    import urbancross.embedded as e
    assert own == [] and sorted(n for ns in elsewhere.values() for n in ns) == sorted(e.__all__)
    assert "DomainStyle" in elsewhere["nbs/02a_embedded_scenes"]
    assert build.api_plan("urbancross.metrics", pages) == (None, {})   # a plain module: all its members


def test_small_site_builds_without_warnings_and_its_links_resolve(tmp_path):
    """Sphinx + myst-nb on a staged two-page site (the full site: `make docs-check`)."""
    root = fake_repo(tmp_path, executed=True)
    out = tmp_path / "html"
    rc = build.build("smoke", None, strict=True, out=out, src=tmp_path / "src", doctrees=tmp_path / "doctrees", root=root)
    assert rc == 0
    problems, n = check_links.check_site(out, root / "nbs")
    assert problems == [] and n["pages"] >= 4
    page = (out / "nbs" / "05_metrics.html").read_text()
    assert 'id="urbancross.metrics.' in page        # autodoc ran on the exported module
    html = (out / "nbs" / "20_within_domain.html").read_text()
    assert re.search(r'class="cell_output.*?<pre><span></span>2\s*</pre>', html, re.S)   # the stored output, not re-run
    assert "results/smoke/notebooks/20_within_domain.ipynb" in html and str(tmp_path) not in html


# --- the link checker --------------------------------------------------------------------------------

def test_check_links_finds_each_kind_of_broken_link(tmp_path):
    site = tmp_path / "html"
    (site / "nbs").mkdir(parents=True)
    (site / "img.png").write_bytes(b"png")
    (site / "index.html").write_text(
        '<a href="nbs/a.html#sec">ok</a> <a href="nbs/a.html">ok</a> <a href="#top" id="top">ok</a> <img src="img.png">'
        '<a href="https://example.org/x.html">external, not followed</a> <a href="mailto:x@y">m</a>'
        '<a href="nbs/missing.html">1</a> <img src="nbs/gone.png"> <a href="nbs/a.html#nope">3</a> <a href="../up.html">4</a>')
    (site / "nbs" / "a.html").write_text('<h2 id="sec">S</h2><a href="../index.html#top">back</a> <a href="./">5</a>')
    problems, n = check_links.check_site(site)
    assert len(problems) == 5, problems
    assert "nbs/missing.html does not exist" in problems[0] and "index.html:1:" in problems[0]
    assert "nbs/gone.png does not exist" in problems[1]
    assert "no id 'nope' in nbs/a.html" in problems[2]
    assert "points outside the site" in problems[3]
    assert "nbs/index.html does not exist" in problems[4] and problems[4].startswith("nbs/a.html:1:")
    assert n == {"pages": 2, "links": 10, "images": 2}
    (site / "nbs" / "a.html").write_text('<h2 id="sec">S</h2><a href="../index.html#top">back</a>')
    (site / "index.html").write_text('<a href="nbs/a.html#sec">ok</a> <img src="img.png"> <a href="#top" id="top">ok</a>')
    assert check_links.check_site(site)[0] == []


def test_check_links_requires_a_reachable_page_per_notebook(tmp_path):
    site, nbs = tmp_path / "html", tmp_path / "nbs"
    (site / "nbs").mkdir(parents=True)
    for name in ("index", "00_core", "01_data", "02_orphan"):
        write_nb(nbs / f"{name}.ipynb", [md(f"# {name}")])
    (site / "index.html").write_text('<a href="nbs/00_core.html">core</a>')
    (site / "nbs" / "00_core.html").write_text('<a href="../index.html">home</a>')
    (site / "nbs" / "02_orphan.html").write_text("no one links here")
    problems, _ = check_links.check_site(site, nbs)
    assert problems == [f"{nbs / '01_data.ipynb'}: no page nbs/01_data.html in the site",
                        f"{nbs / '02_orphan.ipynb'}: its page nbs/02_orphan.html is not reachable from index.html"]
    assert check_links.check_site(tmp_path / "nothing")[0] == [f"{tmp_path / 'nothing'}: no index.html (was the site built? `make docs`)"]
    assert check_links.main([str(site), "--notebooks", str(nbs)]) == 1
