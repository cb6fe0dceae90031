"""Check a built HTML site offline: every local link and image resolves, and every notebook has its page.

For every `.html` file under the site folder, each local `href`/`src` (`a`, `link`, `img`, `script`,
`source`, `iframe`, `video`, `audio`, `embed`, `object`) must name a file inside the site, and an
`#anchor` on an HTML page must be an `id` (or an `<a name>`) of that page. External links (`http:`,
`https:`, `mailto:`, `data:` ...) are not followed: the site is built and checked offline.
With `--notebooks nbs`, every notebook of that folder must also have its page (`nbs/<name>.html`,
`index.ipynb` -> `index.html`), reachable by links from `index.html`.

    python docs/check_links.py docs/_build/html --notebooks nbs
"""
from __future__ import annotations

import argparse
import sys
from collections import deque
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

LINK_ATTRS = {"a": ("href",), "link": ("href",), "area": ("href",), "img": ("src",), "script": ("src",),
              "source": ("src",), "iframe": ("src",), "video": ("src", "poster"), "audio": ("src",),
              "embed": ("src",), "object": ("data",)}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str, int]] = []   # (tag, attr, value, line)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for attr in LINK_ATTRS.get(tag, ()):
            if a.get(attr) is not None:
                self.links.append((tag, attr, a[attr], self.getpos()[0]))

    handle_startendtag = handle_starttag


def parse(path: Path) -> _Page:
    p = _Page()
    try:
        p.feed(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 HTML ({e})") from None
    p.close()
    return p


def is_external(value: str) -> bool:
    parts = urlsplit(value)
    return bool(parts.scheme) or value.startswith("//")


def resolve(site: Path, page: Path, value: str) -> tuple[Path | None, str]:
    """(the file a local link names, its fragment); the file is None when the link leaves the site."""
    parts = urlsplit(value)
    if not parts.path:
        return page, unquote(parts.fragment)
    base = PurePosixPath(page.relative_to(site).as_posix()).parent
    rel = PurePosixPath(unquote(parts.path))
    stack: list[str] = [] if rel.is_absolute() else list(base.parts)
    for part in rel.parts:
        if part in ("/", "", "."):
            continue
        if part == "..":
            if not stack:
                return None, unquote(parts.fragment)
            stack.pop()
        else:
            stack.append(part)
    target = site.joinpath(*stack) if stack else site
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def check_site(site: str | Path, notebooks: str | Path | None = None) -> tuple[list[str], dict]:
    """Problems found in the site at `site` (empty when every link resolves), and counts of what was checked."""
    site = Path(site)
    if not (site / "index.html").is_file():
        return [f"{site}: no index.html (was the site built? `make docs`)"], {"pages": 0, "links": 0}
    # pages, not the theme's assets: _static/ holds copied files such as pydata-sphinx-theme's Jinja template
    # webpack-macros.html, whose `{{ pathto(...) }}` links are filled in when a page is rendered, not in the file
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    parsed = {p: parse(p) for p in pages}
    problems: list[str] = []
    n_links = n_images = 0
    for page, doc in parsed.items():
        where = page.relative_to(site).as_posix()
        for tag, attr, value, line in doc.links:
            value = value.strip()
            if not value or is_external(value):
                continue
            n_links += 1
            n_images += tag == "img"
            target, frag = resolve(site, page, value)
            if target is None:
                problems.append(f"{where}:{line}: <{tag} {attr}={value!r}> points outside the site")
            elif not target.is_file():
                problems.append(f"{where}:{line}: <{tag} {attr}={value!r}> -> {target.relative_to(site).as_posix()} does not exist")
            elif frag and target.suffix == ".html" and frag not in parsed[target].ids:
                problems.append(f"{where}:{line}: <{tag} {attr}={value!r}> -> no id {frag!r} in {target.relative_to(site).as_posix()}")
    if notebooks is not None:
        problems += check_pages(site, Path(notebooks), parsed)
    return problems, {"pages": len(pages), "links": n_links, "images": n_images}


def check_pages(site: Path, nbs: Path, parsed: dict) -> list[str]:
    """Every notebook of `nbs` has its page and `index.html` reaches it by links."""
    seen, todo = {site / "index.html"}, deque([site / "index.html"])
    while todo:   # pages reachable from the front page
        page = todo.popleft()
        for tag, attr, value, _ in parsed[page].links:
            if tag == "a" and not is_external(value.strip()):
                target, _ = resolve(site, page, value.strip())
                if target is not None and target in parsed and target not in seen:
                    seen.add(target)
                    todo.append(target)
    out = []
    for nb in sorted(nbs.glob("*.ipynb")):
        page = site / ("index.html" if nb.name == "index.ipynb" else f"{nbs.name}/{nb.stem}.html")
        if not page.is_file():
            out.append(f"{nb}: no page {page.relative_to(site).as_posix()} in the site")
        elif page not in seen:
            out.append(f"{nb}: its page {page.relative_to(site).as_posix()} is not reachable from index.html")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="the built site, e.g. docs/_build/html")
    ap.add_argument("--notebooks", type=Path, help="also require a reachable page for every notebook here")
    args = ap.parse_args(argv)
    problems, n = check_site(args.site, args.notebooks)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{args.site}: {n['pages']} pages, {n['links']} local links ({n.get('images', 0)} images) checked, "
          f"{len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
