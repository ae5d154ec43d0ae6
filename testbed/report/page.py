"""HTML pieces of the report: escaping, numbers, tables, embedded figures, the page shell.

Everything that comes from the database is escaped here, so a household id or a reason
string can never inject markup into a report someone opens in a browser.
"""

from __future__ import annotations

import base64
import html
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #1d232b; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid
#dde1e6; } h3 { font-size: 14px; }
.meta { color: #5b6470; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #dde1e6; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.cols { display: flex; gap: 32px; flex-wrap: wrap; }
figure { margin: 8px 0; } img { max-width: 100%; }
figcaption { color: #5b6470; font-size: 12px; }
.ok { color: #1b7f3b; } .bad { color: #b3261e; }
footer { margin-top: 32px; color: #6b7480; font-size: 12px; }
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x: Any, spec: str = ".4g") -> str:
    """A number for a table cell; ``–`` for a missing one."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return format(x, spec)
    return esc(x)


def table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (built with :func:`esc` / :func:`fmt`)."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def figure(images: dict[str, bytes], name: str, caption: str) -> str:
    """The PNG embedded (the page stands alone) with a link to the copy beside it."""
    if name not in images:
        return ""
    b64 = base64.b64encode(images[name]).decode()
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
            f'<figcaption>{esc(caption)} (<a href="{esc(name)}">{esc(name)}</a>)</figcaption>'
            f"</figure>")


def document(title: str, parts: list[str]) -> str:
    body = "\n".join(p for p in parts if p)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style></head><body>\n"
            f"{body}\n</body></html>\n")
