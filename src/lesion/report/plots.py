"""PNG plots (matplotlib, Agg backend: no display needed). Every figure states its data and sample counts
in a note under the axes (SPEC §4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from lesion.geometry.breakdown import DeletionCurve, PathProfileResult


def save(fig: plt.Figure, path: str | Path, note: str = "", bottom: float = 0.22) -> Path:
    """Write `fig` as a PNG (creating folders), with `note` (data, counts, intervals) under the axes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, va="bottom", ha="left", wrap=True)
        fig.subplots_adjust(bottom=bottom)
    # The tight box takes in every label and tick: a long y label beside wide tick labels was cut at the edge.
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


@dataclass
class Series:
    """One line: y against x, optionally with a band [low, high] (a confidence interval or ± std)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    style: str = "-o"
    extra: dict = field(default_factory=dict)


def line_plot(path: str | Path, series: Sequence[Series], xlabel: str, ylabel: str, title: str,
              note: str = "", logx: bool = False, logy: bool = False, size: tuple[float, float] = (6.4, 4.4)) -> Path:
    """Draw the series and write a PNG to `path`; `note` (data, counts, intervals) goes under the axes."""
    fig, ax = plt.subplots(figsize=size)
    for s in series:
        (line,) = ax.plot(s.x, s.y, s.style, label=s.label, markersize=4, **s.extra)
        if s.low is not None and s.high is not None:
            ax.fill_between(s.x, s.low, s.high, color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if any(s.label for s in series):
        ax.legend(fontsize=8)
    return save(fig, path, note, bottom=0.22)


def spectrum_plot(path: str | Path, spectra: dict[str, Sequence[float]], tau: float, title: str,
                  note: str = "", density: bool = True) -> Path:
    """[G] Fig. 2A style: sorted eigenvalues of g (log scale) per network, and their density (log10 λ) when the
    spectra are whole (`density`; the top few eigenvalues say nothing of it, and get one panel)."""
    import numpy as np

    if density:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.2))
    else:
        fig, left = plt.subplots(figsize=(5.6, 4.2))
    for label, values in spectra.items():
        vals = np.asarray([v for v in values if v > 0], dtype=float)
        left.plot(np.arange(1, len(vals) + 1), vals, label=label)
        if density and len(vals) > 1:
            right.hist(np.log10(vals), bins=60, alpha=0.5, label=label, density=True)
    left.axhline(tau, color="k", linestyle=":", linewidth=1, label=f"τ = {tau:g}")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("eigenvalue index i")
    left.set_ylabel("λ_i")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)
    if density:
        right.axvline(np.log10(tau), color="k", linestyle=":", linewidth=1)
        right.set_xlabel("log10 λ")
        right.set_ylabel("density")
        right.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, note, bottom=0.24)


def attack_plot(path: str | Path, attacks: dict[str, dict], sigma: float) -> Path:
    """[G] Fig. 2B–E style bars: clean, random (mean, whisker min–max), top eigenvector, loss gradient,
    adversarial and, when run, greedy bit flips, per network (`attacks`: name → AttackResult.to_dict())."""
    import numpy as np

    fig, axes = plt.subplots(1, len(attacks), figsize=(4.8 * len(attacks), 4.0))
    for ax, (name, a) in zip(np.atleast_1d(axes), attacks.items(), strict=True):
        r = a["random_accuracy"]
        bars = {"clean": a["clean_accuracy"], f"random\n(mean of {r['n']})": r["mean"],
                "top eigen-\nvector": a["top_eigenvector_accuracy"], "loss\ngradient": a["gradient_accuracy"],
                "adversarial\n(eigen span)": a["adversarial_accuracy"]}
        bit = a.get("bitflip_accuracy")
        if isinstance(bit, float) and bit == bit:
            bars["greedy\nbit flips"] = bit
        ax.bar(range(len(bars)), list(bars.values()), color=["C2", "C0", "C1", "C4", "C3", "C5"][: len(bars)])
        ax.errorbar([1], [r["mean"]], yerr=[[r["mean"] - r["min"]], [r["max"] - r["mean"]]], color="k", capsize=4)
        ax.set_xticks(range(len(bars)), list(bars.keys()), fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{name}: ‖du‖ = {sigma}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("random (mean; whisker min–max) vs designed", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def breakdown_plot(path: str | Path, curves: Sequence[DeletionCurve], profiles: Sequence[PathProfileResult],
                   title: str, note: str = "", predictions: Sequence[Any] = ()) -> None:
    """Accuracy against deleted fraction (band: 95% CI over random orders) and the covariant acceleration
    along deletion paths, with measured and predicted break-down points; label-free `predictions`
    (`breakdown_predict.Prediction`) as solid vertical lines with their interval shaded, on both panels."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    markers = "osD^v<>"  # beyond ten curves the colours repeat: each round of them gets its own marker and dash
    for i, curve in enumerate(curves):
        (line,) = left.plot(curve.fractions, curve.accuracy, marker=markers[(i // 10) % len(markers)], markersize=3,
                            linestyle="-" if i < 10 else ("--", ":", "-.")[(i // 10 - 1) % 3],
                            label=f"{curve.layer}, {curve.order}")
        lo, hi = zip(*curve.accuracy_ci, strict=True)
        left.fill_between(curve.fractions, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if curve.breakdown_fraction is not None:
            left.axvline(curve.breakdown_fraction, color=line.get_color(), linestyle=":", linewidth=1)
    left.set_xlabel("fraction of units deleted")
    left.set_ylabel("test accuracy")
    left.legend(fontsize=7)
    left.grid(True, alpha=0.3)
    for i, profile in enumerate(profiles):
        (line,) = right.plot(profile.t, profile.covariant_acceleration, "-", label=f"path {i + 1}")
        if profile.predicted_breakdown is not None:
            right.axvline(profile.predicted_breakdown, color=line.get_color(), linestyle="--", linewidth=1)
    right.set_yscale("log")
    right.set_xlabel("fraction of units deleted (path time t)")
    right.set_ylabel("covariant acceleration ‖∇γ'γ'‖_g")
    right.grid(True, which="both", alpha=0.3)
    if profiles:
        right.legend(fontsize=7)
    for i, p in enumerate(predictions):
        color = f"C{(i + 5) % 10}"
        for axis in (left, right):
            axis.axvline(p.fraction, color=color, linewidth=1.5,
                         label=f"label-free prediction ({p.method})" if axis is left else None)
            axis.axvspan(p.interval[0], p.interval[1], color=color, alpha=0.08)
    if predictions:
        left.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.32)
    save(fig, path, note, bottom=0.22)
