"""The report's summary (issue 21, item 1): the figures that decide, read off the stages' results — never
recomputed, so that each equals the number in its section — each with its interval and its section.

Entries (`key`: what it is):
- `clean_accuracy`: test accuracy with its Wilson interval (section network), per token for a sequence model;
- `clean_loss`: a sequence model's mean cross-entropy per token, with its perplexity (network);
- `tolerated_deletion:<site>`: the fraction of a site's units that can be deleted (random order) before mean
  accuracy falls below 90% of clean, interpolated on the deletion curve; interval: where the curve's 95% band
  crosses the same level (section breakdown);
- `most_vulnerable_site`: the site with the smallest tolerated fraction (breakdown);
- `certified_crashes`: per hidden layer of an MLP, the most crashes whose certified worst case keeps every
  output within ε = 1 (raw outputs, ‖·‖∞), beside the measured Omega_av's answer (crash);
- `ber_failure_1pct`, `ber_failure_10pct`: the bit-error rate (in the weights' stored format) at which the
  failure rate reaches 1% and 10%, interpolated in log10(rate); interval from the failure rate's Wilson
  interval (bitflips);
- `most_damaging_bit`: the single bit flip that costs most accuracy (bitflips);
- `perturbation`: accuracy at ‖du‖ = 1, random directions against the adversarial one (geometry);
- `halving_norm`: the weight perturbation norm ‖du‖ that halves accuracy, random directions (median; interval:
  their range) against the adversarial direction (geometry);
- `best_recovery`: the best repair and the share of the lost accuracy it gets back (recovery).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lesion.geometry.breakdown_predict import crossing_fraction

SHARE = 0.9  # break-down: mean accuracy below this share of clean (the breakdown stage's definition)
CERTIFIED_EPSILON = 1.0


def at_least(tolerated: int, measured_up_to: int | None, width: int | None) -> str:
    """A tolerated number of crashes as text: "≥ f" where it is the largest f measured and the layer has more
    units (the search stopped there, not the figure), else f."""
    if measured_up_to is not None and tolerated == measured_up_to and (width is None or tolerated < width):
        return f"≥ {tolerated}"
    return str(tolerated)


def _entry(key: str, label: str, value: Any, text: str, section: str, interval: Sequence[float] | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"key": key, "label": label, "value": value, "interval": None if interval is None else list(interval),
            "text": text, "section": section, **extra}


def tolerated_fraction(curve: dict[str, Any], share: float = SHARE) -> tuple[float | None, list[float | None]]:
    """(where the mean curve falls below share × clean, [lower, upper] where its 95% band does)."""
    level = share * curve["clean_accuracy"]
    fractions = curve["fractions"]
    low = [ci[0] for ci in curve["accuracy_ci"]]
    high = [ci[1] for ci in curve["accuracy_ci"]]
    return (crossing_fraction(fractions, curve["accuracy"], level),
            [crossing_fraction(fractions, low, level), crossing_fraction(fractions, high, level)])


def ber_at_failure(rates: list[dict[str, Any]], level: float) -> tuple[float | None, list[float | None], str]:
    """The bit-error rate where the failure rate reaches `level` (log-linear interpolation), its interval
    from the Wilson bounds, and a note when it lies outside the rates tried."""

    def crossing(values: list[float]) -> float | None:
        logs = [math.log10(r["ber"]) for r in rates]
        for i in range(1, len(rates)):
            if values[i - 1] < level <= values[i]:
                t = (level - values[i - 1]) / (values[i] - values[i - 1])
                return 10 ** (logs[i - 1] + t * (logs[i] - logs[i - 1]))
        return None

    mean = [r["failure_rate"]["rate"] for r in rates]
    value = crossing(mean)
    # a higher failure-rate curve reaches the level at a lower rate
    interval = [crossing([r["failure_rate"]["ci"][1] for r in rates]),
                crossing([r["failure_rate"]["ci"][0] for r in rates])]
    note = ""
    if value is None:
        note = (f"below {rates[0]['ber']:g} (already {mean[0]:.1%} there)" if mean and mean[0] >= level
                else f"above {rates[-1]['ber']:g} (only {mean[-1]:.1%} there)" if mean else "no rates")
    return value, interval, note


def build_scorecard(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary entries for the stages that ran (see the module note); a stage that was skipped gives an
    entry saying so."""
    card: list[dict[str, Any]] = []
    net = results.get("network", {})
    if net.get("clean"):
        clean = net["clean"]
        tokens = net.get("per_token")
        where = (f"per token, on {clean['n']:,} tokens of {tokens['sequences']:,} test sequences" if tokens
                 else f"on {clean['n']} test inputs")
        card.append(_entry("clean_accuracy", "clean test accuracy", clean["accuracy"],
                           f"{clean['accuracy']:.4f} {where}", "network", clean["accuracy_ci"]))
        if tokens:
            card.append(_entry("clean_loss", "clean loss per token", clean["loss"],
                               f"{clean['loss']:.4f} nats (perplexity {clean['perplexity']:.4g})", "network"))
    bd = results.get("breakdown", {})
    if bd.get("curves"):
        worst = None
        for curve in bd["curves"]:
            value, interval = tolerated_fraction(curve)
            what = "heads" if curve.get("kind") == "attention-head" else "units"
            shown = "never below 90% of clean" if value is None else (
                f"{value:.0%} of {curve['units']} {what} (about {round(value * curve['units'])}; interpolated "
                "between the curve's points, where the section lists the first point below 90% of clean)")
            card.append(_entry(f"tolerated_deletion:{curve['layer']}", f"deletions tolerated, {curve['layer']}",
                               value, shown, "breakdown", interval))
            if value is not None and (worst is None or value < worst[1]):
                worst = (curve["layer"], value)
        if worst:
            card.append(_entry("most_vulnerable_site", "most vulnerable site", worst[0],
                               f"{worst[0]}: breaks down after about {worst[1]:.0%} of its units (interpolated)",
                               "breakdown"))
    elif "skipped" in bd:
        card.append(_entry("tolerated_deletion", "deletions tolerated", None, f"not computed: {bd['skipped']}",
                           "breakdown"))
    crash = results.get("crash", {})
    for row in crash.get("certified", []):
        certified = at_least(row["certified"], max(row["faults"], default=0), row.get("width"))
        by_omega = at_least(row["by_omega_av"], row.get("omega_measured_up_to"), row.get("width"))
        card.append(_entry(f"certified_crashes:{row['layer']}", f"crashes certified, hidden layer {row['layer']}",
                           row["certified"],
                           f"{certified} (every crash set keeps every output within ε = {row['epsilon']:g}); "
                           f"measured Omega_av allows {by_omega}", "crash"))
    bits = results.get("bitflips", {})
    if bits.get("rates"):
        for level, key in ((0.01, "ber_failure_1pct"), (0.10, "ber_failure_10pct")):
            value, interval, note = ber_at_failure(bits["rates"], level)
            card.append(_entry(key, f"bit-error rate at {level:.0%} failures", value,
                               note or f"{value:.2g} ({bits.get('format', 'float32')}, all weights)", "bitflips",
                               interval))
        if bits.get("single_bits"):
            b = bits["single_bits"][0]
            card.append(_entry("most_damaging_bit", "most damaging single bit", b["accuracy"],
                               f"bit {b['bit']} ({b['bit_name']}) of {b['param']}[{b['index']}]: accuracy "
                               f"{b['accuracy']:.4f}", "bitflips"))
    att = results.get("geometry", {}).get("attack")
    if att:
        r = att["random_accuracy"]
        card.append(_entry("perturbation", "accuracy at ‖du‖ = 1: random / adversarial",
                           [r["mean"], att["adversarial_accuracy"]],
                           f"{r['mean']:.4f} random (95% CI {r['ci'][0]:.4f}–{r['ci'][1]:.4f}) against "
                           f"{att['adversarial_accuracy']:.4f} adversarial", "geometry", r["ci"]))
        card.extend(_halving_entry(att.get("halving") or {}))
    rec = results.get("recovery", {})
    if rec.get("methods"):
        methods = rec["methods"]
        best_name, best = max(methods.items(), key=lambda item: (item[1]["accuracy"], -item[1]["epoch_equivalents"]))
        naive = methods.get("naive", {}).get("accuracy")
        # the clean accuracy on the inputs the repairs are scored on (a quick report's subset), not on all
        clean = (net.get("evaluation") or net.get("clean") or {}).get("accuracy")
        regained = None
        if naive is not None and clean is not None and clean > naive:
            regained = (best["accuracy"] - naive) / (clean - naive)
        card.append(_entry("best_recovery", "best recovery", best_name,
                           f"{best_name}: {best['accuracy']:.4f} at {best['epoch_equivalents']:.3g} epoch-equivalents"
                           + ("" if regained is None else f"; gets back {regained:.0%} of what the damage cost"),
                           "recovery",
                           regained=regained))
    return card


def _halving_entry(halving: dict[str, Any]) -> list[dict[str, Any]]:
    """The ‖du‖ that halves accuracy, random against adversarial (the geometry section's numbers)."""
    if not halving:
        return []
    adversarial = halving["adversarial"]["norm"]
    random, spread = halving["random_median"], halving["random_range"]
    if random is None:
        text = (f"random: {halving['random_reached']} of {halving['directions']} directions halve accuracy below "
                f"‖du‖ = 1e9")
    else:
        text = f"random directions: median {random:.3g} (range {spread[0]:.3g}–{spread[1]:.3g})"
    if adversarial is None:
        text += "; the adversarial direction does not halve it"
    else:
        text += f" against {adversarial:.3g} adversarial"
        if random is not None and adversarial <= random:
            text += f" ({random / adversarial:.3g}× smaller)"
        elif random is not None:  # the attack's direction (the metric's top eigenvector) did worse than chance
            text += f" ({adversarial / random:.3g}× larger: the designed direction does no better than random here)"
    # the range of a handful of random directions is no confidence interval: no interval (the text gives it)
    return [_entry("halving_norm", "‖du‖ that halves accuracy: random / adversarial", [random, adversarial], text,
                   "geometry", None)]
