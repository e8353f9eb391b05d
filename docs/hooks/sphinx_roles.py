"""mkdocs hook: the docstrings are written for Sphinx, so ``:class:`Key``` reaches the page as the literal text
":class:" before the code span; drop the role so the name reads as plain code."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|exc|obj|const):(?=<code)")


def on_page_content(html: str, **_: object) -> str:
    return _ROLE.sub("", html)
