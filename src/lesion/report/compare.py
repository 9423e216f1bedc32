"""Models side by side (issue 21, item 3): the same analyses of several models in one page — their scorecards
in one table with the differences and whether the intervals overlap, and their curves on the same axes.

Each model's own report is written first (`run_report` into a folder of its own); this page is built from
their `results.json`, so it shows exactly their numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesion.report.html import Link, Section, render
from lesion.report.jsonio import write_json
from lesion.report.markdown import render_markdown
from lesion.report.sections import fmt


def overlap(a: list[float] | None, b: list[float] | None) -> bool | None:
    """Whether two intervals overlap (None when either is missing)."""
    if not a or not b or None in a or None in b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def comparison_rows(cards: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per scorecard key that every model has: values, intervals, the difference of numeric values
    against the first model, and whether each interval overlaps the first model's."""
    keyed = [{e["key"]: e for e in card} for card in cards]
    rows = []
    for key in [e["key"] for e in cards[0]]:
        if not all(key in k for k in keyed):
            continue
        entries = [k[key] for k in keyed]
        first = entries[0]
        numeric = all(isinstance(e["value"], int | float) and not isinstance(e["value"], bool) for e in entries)
        rows.append({"key": key, "label": first["label"], "section": first["section"],
                     "values": [e["value"] for e in entries], "texts": [e["text"] for e in entries],
                     "intervals": [e["interval"] for e in entries],
                     "differences": [e["value"] - first["value"] for e in entries[1:]] if numeric else None,
                     "overlaps_first": [overlap(first["interval"], e["interval"]) for e in entries[1:]]})
    return rows


def _overlay(out: Path, runs: list[dict[str, Any]], labels: list[str]) -> list[tuple[Path, str]]:
    """Deletion curves of the sites every model shares, and bit-flip accuracy, on shared axes."""
    from lesion.report.plots import Series, line_plot

    figures = []
    shared = set.intersection(*[{c["layer"] for c in r.get("breakdown", {}).get("curves", [])} for r in runs])
    for site in sorted(shared):
        series = []
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            curve = next(c for c in run["breakdown"]["curves"] if c["layer"] == site)
            lo, hi = zip(*curve["accuracy_ci"], strict=True)
            series.append(Series(label, curve["fractions"], curve["accuracy"], list(lo), list(hi),
                                 extra={"color": f"C{i}"}))
        path = line_plot(out / f"compare-breakdown-{site.replace('.', '_')}.png", series,
                         "fraction of units deleted", "test accuracy", f"Unit deletion in {site}",
                         "band: 95% CI over random orders")
        figures.append((path, f"accuracy against the fraction of {site}'s units deleted, every model"))
    if all(r.get("bitflips", {}).get("rates") for r in runs):
        series = []
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            rates = run["bitflips"]["rates"]
            series.append(Series(label, [r["ber"] for r in rates], [r["mean"] for r in rates],
                                 [r["ci"][0] for r in rates], [r["ci"][1] for r in rates], extra={"color": f"C{i}"}))
        formats = sorted({run["bitflips"].get("format", "float32") for run in runs})
        path = line_plot(out / "compare-bitflips.png", series, f"bit-error rate ({' / '.join(formats)}, all weights)",
                         "test accuracy", "Bit-flip sensitivity", "band: 95% CI of the mean", logx=True)
        figures.append((path, "accuracy against the bit-error rate, every model"))
    return figures


def write_comparison(out: Path, folders: list[Path], labels: list[str]) -> Path:
    """Build DIR/report.html, report.md and results.json comparing the reports in `folders`."""
    runs = [json.loads((folder / "results.json").read_text()) for folder in folders]
    cards = [run["scorecard"] for run in runs]
    rows = comparison_rows(cards)
    summary = Section("summary", "Summary, side by side")
    summary.paragraphs.append("Each figure of each model's summary; the difference is against the first model, and "
                              "'overlap' says whether the 95% intervals overlap (no: the difference is beyond "
                              "sampling noise).")
    header = ["figure", *labels] + [f"{label} − {labels[0]}" for label in labels[1:]] + \
        [f"overlap, {label}" for label in labels[1:]]
    table = []
    for row in rows:
        diffs = row["differences"] or [None] * (len(labels) - 1)
        values = [Link(text, f"{folder.name}/report.html#{row['section']}")  # each in its model's own report
                  for text, folder in zip(row["texts"], folders, strict=True)]
        table.append([row["label"], *values, *[fmt(d) for d in diffs], *[fmt(o) for o in row["overlaps_first"]]])
    summary.tables.append((header, table))
    links = Section("reports", "Each model's report")
    links.tables.append((["model", "report"], [[label, Link(f"{folder.name}/report.html",
                                                              f"{folder.name}/report.html")]
                                               for label, folder in zip(labels, folders, strict=True)]))
    curves = Section("breakdown", "Curves on the same axes")
    curves.figures = _overlay(out, runs, labels)
    sections = [summary, curves, links]
    subtitle = "models: " + "; ".join(f"{label} ({run['network']['model'].get('source', '')})"
                                      for label, run in zip(labels, runs, strict=True))
    page = out / "report.html"
    page.write_text(render("lesion resilience report: models side by side", subtitle, sections))
    (out / "report.md").write_text(render_markdown("lesion resilience report: models side by side", subtitle,
                                                   sections))
    write_json(out / "results.json", {"models": labels, "folders": [f.name for f in folders],
                                      "comparison": rows, "scorecards": cards})
    return page
