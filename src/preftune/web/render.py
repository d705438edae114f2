"""Templates and the few filters they use. Everything is autoescaped.

Guidelines are markdown written by the admin; they are rendered by markdown-it-py with raw HTML
turned off (so `<script>` in a guideline comes out as text) and its default link validation (which
refuses `javascript:` and similar URLs). Model and annotator text is never passed through markdown:
it is shown as escaped text with its line breaks kept by CSS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

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
)
environment.filters["markdown"] = markdown_to_html
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
