"""Sphinx configuration: Markdown pages (MyST) and an API reference from the docstrings of
the installed, compiled package. Build from outside the checkout so that the source tree
does not shadow the installed package: ``sphinx-build -W docs build/docs``."""

from pygments.lexers.special import TextLexer

import mshare

project = "mshare"
release = version = mshare.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
# Links to headings inside a page and across pages: [text](page.md#a-heading).
myst_heading_anchors = 3
autodoc_member_order = "bysource"
html_theme = "furo"
html_title = f"mshare {release}"


def setup(app):
    # Blocks fenced as `output` are the expected output of the example above them
    # (tests/test_examples.py checks it); they are shown as plain text.
    app.add_lexer("output", TextLexer)
