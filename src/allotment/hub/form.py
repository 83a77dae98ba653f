"""The launch form: the profiles a user may start, each with its live quote.

The page is rendered once with the quote the spawner fetched, and refreshes itself from
``GET /quote`` while it is open, with a short-lived read-only token of the same user. One
renderer (the page's script) draws both, so the first paint and every refresh agree.
"""

from __future__ import annotations

import json

from jinja2 import Environment, PackageLoader, select_autoescape

from allotment.schemas import QuoteOut

__all__ = ["render_form"]

_templates = Environment(
    loader=PackageLoader("allotment.hub", "templates"),
    autoescape=select_autoescape(["html"]),
)


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_form(
    quote: QuoteOut,
    *,
    service_url: str,
    token: str,
    refresh_seconds: int,
    notice: str | None = None,
) -> str:
    """The form; ``notice``: a line above the profiles (why the last session ended)."""
    return _templates.get_template("launch.html").render(
        quote=quote,
        notice=notice,
        initial=_script_json(quote.model_dump(mode="json")),
        config=_script_json(
            {
                "quoteUrl": service_url.rstrip("/") + "/api/quote",
                "token": token,
                "refreshMs": max(1, refresh_seconds) * 1000,
            }
        ),
    )
