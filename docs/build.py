"""Build the documentation site offline: stage the pages from the notebooks, then run Sphinx + myst-nb.

Nothing is executed. The pages are staged in `docs/_src/` (git-ignored), mirroring the repository's
layout so that a relative link that works in README.md works on the site too:

- `index.ipynb`: `nbs/index.ipynb` (the README's source) with the site's table of contents appended;
- `nbs/<name>.ipynb` for every library notebook (the stripped source as committed), followed by the
  API of the module it exports (`#| default_exp`), rendered by `sphinx.ext.autodoc` from the docstrings;
- `nbs/<name>.ipynb` for every experiment notebook (`urbancross.experiment.experiment_notebooks`), read
  from the executed copy `results/<DOCS_PROFILE>/notebooks/<name>.ipynb` with its tables and figures;
  when that copy is missing the stripped source is shown with a warning at the top of the page;
- the repository's other notes (`data/README.md`, `benchmarks/README.md`).

nbdev's conventions are applied to the copies as nbdev's own site would: `#|` directive lines are
dropped from code cells, `#| hide` cells are left out, and the `- key: value` front-matter lines of a
notebook's first cell are removed.

    python docs/build.py                     # DOCS_PROFILE=smoke: docs/_build/html
    python docs/build.py --profile paper
    python docs/build.py --notebooks outputs/smoke   # executed notebooks from elsewhere (development)
    python docs/build.py --strict --clean    # from scratch, warnings are errors (make docs-check)

Environment: DOCS_PROFILE and DOCS_NOTEBOOKS are the defaults of --profile and --notebooks.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = DOCS / "_src"
OUT = DOCS / "_build" / "html"
DOCTREES = DOCS / "_build" / "doctrees"   # Sphinx's cache, kept out of the site
NOTES = ["data/README.md", "benchmarks/README.md"]   # repository notes shown as pages when present
FRONT_MATTER = re.compile(r"^- [A-Za-z_][\w-]*: .*$")


@dataclass
class Page:
    """One staged notebook page: its name (`nbs/<stem>`), title, kind and where its content came from."""
    name: str
    title: str
    kind: str            # "library" | "experiment" | "other"
    source: Path
    module: str | None = None
    executed: bool | None = None   # experiments only


def nb_title(nb) -> str:
    """The first `# ` heading of a notebook's markdown, or '' if it has none."""
    for c in nb.cells:
        if c.cell_type == "markdown":
            for ln in c.source.splitlines():
                if ln.startswith("# "):
                    return ln[2:].strip()
    return ""


def default_exp(nb) -> str | None:
    """The module a notebook exports (`#| default_exp name`), as `urbancross.name`, or None."""
    for c in nb.cells:
        if c.cell_type == "code":
            m = re.search(r"^#\|\s*default_exp\s+(\S+)", c.source, re.M)
            if m:
                name = f"urbancross.{m.group(1)}"
                return name.removesuffix(".__init__")   # a package's __init__.py
    return None


def nbdev_view(nb):
    """A copy of `nb` as nbdev's site shows it: no `#|` lines, no `#| hide` cells, no front-matter lines."""
    nb = copy.deepcopy(nb)
    cells, first_md = [], True
    for c in nb.cells:
        if c.cell_type == "code":
            lines = c.source.splitlines()
            flags = [ln.lstrip()[2:].split() for ln in lines if ln.lstrip().startswith("#|")]
            if any(f[:1] == ["hide"] for f in flags):
                continue
            body = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#|")).strip("\n")
            if not body and not c.get("outputs"):
                continue
            c.source = body
        elif c.cell_type == "markdown" and first_md:
            first_md = False
            kept = [ln for ln in c.source.splitlines() if not FRONT_MATTER.match(ln)]
            c.source = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
        cells.append(c)
    nb.cells = cells
    return nb


def md_cell(text: str):
    return nbformat.v4.new_markdown_cell(text)


def insert_after_title(nb, cell) -> None:
    """Insert `cell` right after the first markdown cell (the title), or first if there is none."""
    i = next((k for k, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    nb.cells.insert(i + 1, cell)


def api_plan(module: str, pages: list[Page]) -> tuple[list[str] | None, dict[str, list[str]]]:
    """What a package's API section shows: (its own names, or None for "all members"; re-exported names by page).

    A plain module documents all of `__all__` (None). A package (an `__init__.py`) that re-exports names
    of modules with their own page links those pages instead of documenting the same objects twice.
    """
    import importlib
    import inspect
    try:
        mod = importlib.import_module(module)
    except Exception as e:   # a notebook mid-edit elsewhere: let autodoc report it
        print(f"warning: cannot import {module} ({type(e).__name__}: {e}); documenting all its members", file=sys.stderr)
        return None, {}
    if not hasattr(mod, "__path__"):
        return None, {}
    pages_of = {p.module: p.name for p in pages if p.module and p.module != module}
    exported = {}   # name -> the modules with a page that export that very object (constants have no __module__)
    for m in pages_of:
        try:
            sub = importlib.import_module(m)
        except Exception:
            continue
        for n in getattr(sub, "__all__", []):
            exported.setdefault(n, []).append((m, getattr(sub, n, None)))
    own, elsewhere = [], {}
    for n in getattr(mod, "__all__", []):
        obj = getattr(mod, n, None)
        home = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        if home not in pages_of:
            home = next((m for m, o in exported.get(n, []) if o is obj), home)
        if home in pages_of:
            elsewhere.setdefault(pages_of[home], []).append(n)
        else:
            own.append(n)
    return own, elsewhere


def api_cell(module: str, own: list[str] | None = None, elsewhere: dict[str, list[str]] | None = None):
    """The API section of a library page: autodoc of `own` (None: every member), links for re-exported names."""
    text = [f"## API reference: `{module}`"]
    if elsewhere:
        links = "; ".join(", ".join(f"`{n}`" for n in names) + f" from [`{page.split('/')[-1]}`]({page.split('/')[-1]}.ipynb)"
                          for page, names in elsewhere.items())
        text.append(f"`{module}` re-exports names documented on their own pages: {links}.")
    if own is None or own:
        members = ":members:" if own is None else ":members: " + ", ".join(own)
        text.append(f"The docstrings of what `{module}` exports, as `nbdev_export` wrote them.\n\n"
                    f"```{{eval-rst}}\n.. automodule:: {module}\n   {members}\n   :member-order: bysource\n```")
    return md_cell("\n\n".join(text))


def missing_note(rel: str, profile: str):
    return md_cell(f"```{{warning}}\nNo executed copy of this notebook at `{rel}`, so this page shows its source "
                   f"**without outputs** (no tables or figures). `make reproduce PROFILE={profile}` writes the "
                   f"executed copies there.\n```")


def executed_note(rel: str):
    return md_cell(f"```{{note}}\nThe executed notebook `{rel}`, with its outputs as they were computed; "
                   f"this page does not run it.\n```")


def rel(p: Path, root: Path = ROOT) -> str:
    """`p` relative to the repository root when it is inside it (as the pages name it), else as given."""
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def classify(nbs_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(library, experiment, other) notebooks of `nbs_dir`; experiments as `experiment_notebooks` lists them."""
    from urbancross.experiment import experiment_notebooks
    experiments = experiment_notebooks(nbs_dir)
    ex = set(experiments)
    lib, other = [], []
    for p in sorted(nbs_dir.glob("*.ipynb")):
        if p.name == "index.ipynb" or p in ex:
            continue
        (lib if p.name[:2].isdigit() else other).append(p)
    return lib, experiments, other


def write_if_changed(path: Path, data: bytes, written: set[Path]) -> None:
    """Write only changed files, so that Sphinx rebuilds only the pages whose source changed."""
    written.add(path.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def nb_bytes(nb) -> bytes:
    for c in nb.cells:   # ids are not needed on the site; nbformat accepts them absent
        c.pop("id", None)
    nb.nbformat, nb.nbformat_minor = 4, 4
    return (json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()


def read_nb(path: Path):
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:
        raise ValueError(f"{path}: not a readable notebook ({type(e).__name__}: {e})") from None


def toc_cell(pages: list[Page], notes: list[str], profile: str, nb_dir_rel: str):
    def toctree(caption: str, entries: list[str]) -> str:
        return "```{toctree}\n:maxdepth: 1\n:caption: " + caption + "\n\n" + "\n".join(entries) + "\n```"

    def entry(p: Page) -> str:
        stem = p.name.split("/")[-1]
        title = f"{stem}: {p.title}" if p.title else stem
        return f"{title} <{p.name}>"

    blocks = ["## The site\n\nEvery notebook of `nbs/`, in the order a reader learns the method. Library pages "
              "show the notebook (not executed) and then the API of the module it exports. Experiment pages show "
              f"the executed notebooks of the `{profile}` profile from `{nb_dir_rel}/`, with their tables and figures."]
    for kind, caption in (("library", "Library notebooks and API"),
                          ("experiment", f"Experiments (executed, {profile} profile)"),
                          ("other", "Other notebooks")):
        entries = [entry(p) for p in pages if p.kind == kind]
        if entries:
            blocks.append(toctree(caption, entries))
    if notes:
        blocks.append(toctree("Repository notes", [n[:-3] for n in notes]))
    return md_cell("\n\n".join(blocks))


def stage(profile: str = "smoke", notebooks: Path | None = None, src: Path = SRC, root: Path = ROOT) -> list[Page]:
    """Write the Sphinx sources into `src`; returns the notebook pages staged. Removes stale files there."""
    nbs_dir = root / "nbs"
    nb_dir = Path(notebooks) if notebooks else root / "results" / profile / "notebooks"
    if not (nbs_dir / "index.ipynb").exists():
        raise FileNotFoundError(f"{nbs_dir / 'index.ipynb'}: missing; it is the site's front page and the README's source")
    lib, experiments, other = classify(nbs_dir)
    written: set[Path] = set()
    pages: list = []
    for kind, paths in (("library", lib), ("experiment", experiments), ("other", other)):
        for p in paths:
            nb = read_nb(p)
            page = Page(name=f"nbs/{p.stem}", title=nb_title(nb), kind=kind, source=p, module=default_exp(nb))
            if kind == "experiment":
                run = nb_dir / p.name
                page.executed = run.exists()
                if page.executed:
                    page.source = run
                    view = nbdev_view(read_nb(run))
                    insert_after_title(view, executed_note(rel(run, root)))
                else:
                    view = nbdev_view(nb)
                    insert_after_title(view, missing_note(rel(run, root), profile))
            else:
                view = nbdev_view(nb)
            pages.append((page, view))
    for page, view in pages:   # API sections last: a package's section links its modules' pages
        if page.kind != "experiment" and page.module:
            view.cells.append(api_cell(page.module, *api_plan(page.module, [q for q, _ in pages])))
        write_if_changed(src / f"{page.name}.ipynb", nb_bytes(view), written)
    pages = [page for page, _ in pages]
    notes = [n for n in NOTES if (root / n).exists()]
    for n in notes:
        write_if_changed(src / n, (root / n).read_bytes(), written)
    index = nbdev_view(read_nb(nbs_dir / "index.ipynb"))
    index.cells.append(toc_cell(pages, notes, profile, rel(nb_dir, root)))
    write_if_changed(src / "index.ipynb", nb_bytes(index), written)
    for f in sorted(src.rglob("*"), reverse=True):   # stale pages (a notebook renamed or removed)
        if f.is_file() and f.resolve() not in written:
            f.unlink()
        elif f.is_dir() and not any(f.iterdir()):
            f.rmdir()
    return pages


def build(profile: str, notebooks: Path | None, strict: bool = False, out: Path = OUT, src: Path = SRC,
          doctrees: Path = DOCTREES, clean: bool = False, root: Path = ROOT) -> int:
    """Stage the pages and run Sphinx's html builder; returns Sphinx's exit status."""
    from sphinx.cmd.build import build_main
    t0 = time.perf_counter()
    if clean:
        for d in (out, doctrees):
            if d.exists():
                shutil.rmtree(d)
    pages = stage(profile, notebooks, src, root)
    ex = [p for p in pages if p.kind == "experiment"]
    missing = [p.name for p in ex if not p.executed]
    print(f"staged {len(pages)} notebook pages in {rel(src)} ({len(ex) - len(missing)}/{len(ex)} experiments executed"
          + (f"; without outputs: {', '.join(missing)}" if missing else "") + ")")
    args = ["-b", "html", "-c", str(DOCS), "-d", str(doctrees), "-q", str(src), str(out)]
    if strict:
        args[:0] = ["-W", "--keep-going"]
    rc = build_main(args)
    print(f"sphinx: exit {rc}, {time.perf_counter() - t0:.1f} s; site in {rel(out)}/index.html")
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=os.environ.get("DOCS_PROFILE") or "smoke",
                    help="whose executed experiment notebooks to show: results/<profile>/notebooks/ (default smoke)")
    ap.add_argument("--notebooks", type=Path, default=os.environ.get("DOCS_NOTEBOOKS") or None,
                    help="read the executed experiment notebooks from this folder instead")
    ap.add_argument("--strict", action="store_true", help="Sphinx warnings are errors")
    ap.add_argument("--clean", action="store_true", help="remove the previous site and Sphinx's cache first")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from urbancross.core import PROFILES
    if args.profile not in PROFILES:
        ap.error(f"--profile/DOCS_PROFILE: {args.profile!r} is not a profile (one of {', '.join(sorted(PROFILES))})")
    return build(args.profile, args.notebooks, args.strict, args.out, clean=args.clean)


if __name__ == "__main__":
    sys.exit(main())
