"""`report.md` beside the HTML page (issue 21, item 4): the same sections as Markdown tables, for tickets;
figures are named by file (they sit in the same folder)."""

from __future__ import annotations

from lesion.report.html import Link, Section


def _cell(value: object) -> str:
    text = f"[{value.text}]({value.href})" if isinstance(value, Link) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    """The page as Markdown."""
    lines = [f"# {title}", "", f"_{subtitle}_", ""]
    for s in sections:
        lines += [f"## {s.title}", f'<a id="{s.id}"></a>', ""]
        for paragraph in s.paragraphs:
            lines += [paragraph, ""]
        for header, rows in s.tables:
            lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        for path, caption in s.figures:
            lines += [f"Figure `{path.name}`: {caption}", ""]
    return "\n".join(lines)
