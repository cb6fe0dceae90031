"""Sphinx configuration of the UrbanCross site. Build it with `make docs` (docs/build.py stages the pages
into docs/_src/ first); never executes a notebook."""
import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # autodoc imports the package from this checkout
_ini = configparser.ConfigParser(delimiters=["="])
_ini.read(ROOT / "settings.ini")
_s = _ini["DEFAULT"]

project = _s["title"]
author = _s["author"]
copyright = _s["copyright"]
release = version = _s["version"]

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# myst-nb: show the outputs stored in the notebooks, run nothing.
nb_execution_mode = "off"
nb_merge_streams = True          # one block per cell for the many progress lines of a training run
myst_heading_anchors = 3         # `#section` links inside a page resolve
myst_enable_extensions = ["colon_fence"]

# autodoc: only the package's own docstrings (none inherited from torch), written with markdown-style
# `code` spans: single backticks read as code.
default_role = "code"
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# sphinx-book-theme (Jupyter Book's theme, made for pages of notebooks): offline (no repository buttons, no
# launch buttons, no analytics), the page's own table of contents in the right column; urbancross.css widens the
# article and wraps code cells, logs and tables, so nothing scrolls sideways in a 1400 px window.
html_theme = "sphinx_book_theme"
html_title = f"{project} {release}"
html_theme_options = {"show_toc_level": 2, "home_page_in_toc": True, "use_download_button": False,
                      "use_fullscreen_button": False, "use_repository_button": False, "navigation_with_keys": False,
                      "show_navbar_depth": 1, "launch_buttons": {}}
html_show_sourcelink = False
html_static_path = ["_static"]
html_css_files = ["urbancross.css"]
html_copy_source = False          # the notebooks are in the repository; the site need not carry them


_CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _markdown_code_spans(app, what, name, obj, options, lines):
    """A markdown code span may start or end with a space (`; surrounded by `); reStructuredText's may not,
    so the spaces are dropped from the rendered span. Nothing else of the docstring changes."""
    text = "\n".join(lines)
    fixed = _CODE_SPAN.sub(lambda m: f"`{m.group(1).strip()}`" if m.group(1).strip() else m.group(0), text)
    if fixed != text:
        lines[:] = fixed.split("\n")


def setup(app):
    app.connect("autodoc-process-docstring", _markdown_code_spans)
