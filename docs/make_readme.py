"""Render `nbs/index.ipynb` (nbdev's `readme_nb`) to `README.md`, offline.

`nbdev_readme` needs quarto, which cannot be installed here, so this script does the one thing the
README needs: the notebook's markdown cells, in order, separated by a blank line. Code cells (the
index has none today) become fenced `python` blocks without their `#|` directive lines; cells marked
`#| hide` are left out. Outputs are never rendered: the index is saved without them.

    python docs/make_readme.py           # write README.md
    python docs/make_readme.py --check   # exit 1 if README.md is not what index.ipynb renders to
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "nbs" / "index.ipynb"
README = ROOT / "README.md"
HEADER = ("<!-- Generated from nbs/index.ipynb by docs/make_readme.py: edit the notebook, then run "
          "`python docs/make_readme.py`. -->")


def directives(source: str) -> tuple[list[str], str]:
    """Split a code cell into its nbdev `#|` directive lines and the rest of its source."""
    lines = source.splitlines()
    flags = [ln for ln in lines if ln.lstrip().startswith("#|")]
    body = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#|"))
    return flags, body.strip("\n")


def render_cell(cell) -> str | None:
    """One cell as README markdown, or None when the cell is not shown (empty, `#| hide`, raw)."""
    if cell.cell_type == "markdown":
        text = cell.source.strip("\n")
        return text or None
    if cell.cell_type == "code":
        flags, body = directives(cell.source)
        if any(f.split("#|", 1)[1].split()[:1] == ["hide"] for f in flags) or not body:
            return None
        return f"```python\n{body}\n```"
    return None


def render_readme(nb_path: str | Path = INDEX) -> str:
    """The README text `nb_path` renders to: a generated-file note, then every shown cell."""
    nb_path = Path(nb_path)
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except FileNotFoundError:
        raise FileNotFoundError(f"{nb_path}: the README's source notebook (settings.ini readme_nb) is missing") from None
    except Exception as e:   # nbformat raises several kinds for bad JSON or schema
        raise ValueError(f"{nb_path}: not a readable notebook ({type(e).__name__}: {e})") from None
    parts = [p for p in map(render_cell, nb.cells) if p is not None]
    if not parts:
        raise ValueError(f"{nb_path}: no markdown or code cell to render")
    return "\n\n".join([HEADER, *parts]) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder (never a half-written README)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; fail if README.md is out of date")
    ap.add_argument("--index", type=Path, default=INDEX)
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = render_readme(args.index)
    if args.check:
        current = args.readme.read_text(encoding="utf-8") if args.readme.exists() else None
        if current != text:
            print(f"{args.readme} is not what {args.index} renders to: run `python docs/make_readme.py`",
                  file=sys.stderr)
            return 1
        print(f"{args.readme} is up to date with {args.index}")
        return 0
    write_atomic(args.readme, text)
    print(f"wrote {args.readme} from {args.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
