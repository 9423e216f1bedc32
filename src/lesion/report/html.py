"""A self-contained HTML page: sections of text, tables and PNG figures embedded as base64 (opens offline)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere (a section of the page: `#id`)."""

    text: str
    href: str

    def __str__(self) -> str:
        return self.text


def _cell(value: object) -> str:
    if isinstance(value, Link):
        return f"<a href='{html.escape(value.href)}'>{html.escape(value.text)}</a>"
    return html.escape(str(value))


@dataclass
class Section:
    """One section of the report: an id, a title, paragraphs, tables (header, rows) and figure files."""

    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)


STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; } .note { color: #666; font-size: 0.9em; }
nav a { margin-right: 1em; } .scroll { overflow-x: auto; }
#summary table { font-size: 1em; } #summary td { text-align: left; }
@media (max-width: 640px) { body { margin: 1em auto; } th, td { padding: 0.2em 0.35em; } }
@media print { nav { display: none; } section { break-inside: avoid-page; } figure img { max-width: 90%; } }
"""


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """The page as a string."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>{html.escape(subtitle)}</p><nav>"]
    parts += [f"<a href='#{s.id}'>{html.escape(s.title)}</a>" for s in sections]
    parts.append("</nav>")
    for s in sections:
        parts.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        for header, rows in s.tables:
            parts.append("<div class='scroll'><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                         + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table></div>")
        for path, caption in s.figures:
            parts.append(f"<figure><img src='{_image(path)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
