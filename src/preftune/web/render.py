"""Templates and the few filters they use. Everything is autoescaped.

Guidelines are markdown written by the admin; they are rendered by markdown-it-py with raw HTML
turned off (so `<script>` in a guideline comes out as text) and its default link validation (which
refuses `javascript:` and similar URLs). Model and annotator text is never passed through markdown:
it is shown as escaped text with its line breaks kept by CSS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from preftune.web.security import current_session

WEB_DIR = Path(__file__).parent
TEMPLATE_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

_markdown = None


def markdown_to_html(text: str) -> Markup:
    """Safe HTML for admin-written markdown (see module docstring)."""
    global _markdown
    if _markdown is None:
        from markdown_it import MarkdownIt

        _markdown = MarkdownIt("commonmark", {"html": False})
    return Markup(_markdown.render(text or ""))


# A run of this many characters without a space gets a break opportunity (<wbr>) every
# `WORD_CHUNK` characters. Left to itself, Chromium lays out a 200,000-character word in a
# complex script (Arabic, say) by reshaping the rest of the word at every candidate line end:
# seconds to tens of seconds per page. Ordinary words never reach this length, so they wrap as usual.
LONG_WORD = 120
WORD_CHUNK = 60
_LONG_RUN = re.compile(rf"\S{{{LONG_WORD},}}")


def breakable(text: str | None) -> Markup:
    """Escaped text with <wbr> inside very long runs without spaces (see LONG_WORD)."""
    if not text:
        return Markup("")
    pieces, last = [], 0
    for run in _LONG_RUN.finditer(text):
        pieces.append(escape(text[last : run.start()]))
        word = run.group()
        pieces.append(Markup("<wbr>").join(escape(word[i : i + WORD_CHUNK]) for i in range(0, len(word), WORD_CHUNK)))
        last = run.end()
    pieces.append(escape(text[last:]))
    return Markup("").join(pieces)


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    # Compiled once per process: no file check on every render (templates ship with the package).
    auto_reload=False,
)
environment.filters["markdown"] = markdown_to_html
environment.filters["breakable"] = breakable
environment.filters["number"] = _number
environment.filters["percent"] = _percent
environment.filters["tojson_text"] = lambda value: json.dumps(value, ensure_ascii=False)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render `template` with the caller's session and CSRF token available to every page."""
    session = current_session(request)
    context.setdefault("title", "preftune")
    html = environment.get_template(template).render(
        request=request,
        session=session,
        csrf=session["csrf"] if session else "",
        status_code=status_code,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")
