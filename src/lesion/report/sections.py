"""The report's sections from the stages' results: text, tables with counts and intervals, figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lesion.report.html import Link, Section
from lesion.report.scorecard import at_least


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for tables: fixed decimals, or scientific for very large or small values."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


def _analysis_inputs(spec: dict[str, Any], geo: dict[str, Any]) -> str:
    """The metric's inputs: sequences and their token rows for a sequence model (spec['inputs'] counts rows)."""
    sequences = (geo.get("attack") or {}).get("analysis_inputs")
    if sequences and sequences != spec["inputs"]:
        return f"{sequences} sequences ({spec['inputs']:,} token rows)"
    return f"{spec['inputs']} inputs"


def _trace_text(spec: dict[str, Any]) -> str:
    """The trace, with its interval and method where it is estimated (Hutchinson on the Lanczos route)."""
    ci = spec.get("trace_ci")
    if not ci:
        return f"trace {fmt(spec['trace'])}"
    return f"trace ≈ {fmt(spec['trace'])} ({spec.get('trace_method', 'estimated')}; 95% CI {fmt(ci[0])}–{fmt(ci[1])})"


def _rho_text(spec: dict[str, Any]) -> str:
    """ρ(τ), or, where the float32 resolution floor lies above τ, ρ at that floor, said so (below it eigenvalues
    are not resolved, so ρ(τ) itself is not known)."""
    floor = spec.get("resolution_floor") or 0.0
    if floor > spec["threshold"]:
        return (f"ρ = {fmt(spec['rho'])} counting eigenvalues above {fmt(floor)} (ρ({spec['threshold']:g}) is at "
                f"least this: eigenvalues below {fmt(floor)} are not resolved at the model's precision)")
    return f"ρ({spec['threshold']:g}) = {fmt(spec['rho'])}"


def _figures(result: dict[str, Any], out: Path, captions: dict[str, str]) -> list[tuple[Path, str]]:
    return [(out / name, captions.get(name, name)) for name in result.get("figures", []) if (out / name).exists()]


def _skipped(section: Section, result: dict[str, Any]) -> bool:
    if not result:
        section.paragraphs.append("Not run in this report (see --stages).")
        return True
    if "skipped" in result:
        section.paragraphs.append(f"Not computed: {result['skipped']}.")
        return True
    return False


def summary_section(card: list[dict[str, Any]]) -> Section:
    """The summary first (issue 21): one row per scorecard entry, with its interval and a link to its section."""
    s = Section("summary", "Summary")
    s.paragraphs.append("The figures that decide, each read from the section it links to (interpolated between its "
                        "measured points where the text says so); intervals are 95%, one-sided where a side is "
                        "beyond the points measured.")
    rows = []
    for entry in card:
        interval = entry.get("interval")
        if not interval or interval[0] is None and interval[1] is None:
            shown = "–"
        elif interval[0] is None:
            shown = f"≤ {fmt(interval[1])}"
        elif interval[1] is None:
            shown = f"≥ {fmt(interval[0])}"
        else:
            shown = f"{fmt(interval[0])}–{fmt(interval[1])}"
        rows.append([entry["label"], entry["text"], shown, Link(f"section {entry['section']}", f"#{entry['section']}")])
    s.tables.append((["figure", "value", "interval", "from"], rows))
    return s


def build_sections(results: dict[str, Any], out: Path) -> list[Section]:
    """One Section per stage, in the report's order."""
    sections = []
    net = results.get("network", {})
    s = Section("network", "1. Network and data")
    clean = net.get("clean")
    description = net.get("data", {}).get("description", "")
    int8 = net.get("int8")
    weights = (f"{sum(int8['stored'].values()):,} int8 weights in {len(int8['stored'])} quantised layers" if int8
               else f"{net.get('parameters', 0):,} trainable parameters")
    s.paragraphs.append(f"{weights}; data: {description}")
    tokens = net.get("per_token")
    if clean:
        lo, hi = clean["accuracy_ci"]
        n = (f"{clean['n']:,} tokens of {tokens['sequences']:,} sequences" if tokens else f"n = {clean['n']}")
        s.paragraphs.append(f"Clean test accuracy {clean['accuracy']:.4f}{' per token' if tokens else ''} (95% Wilson "
                            f"interval {lo:.4f}–{hi:.4f}, {n}), loss {clean['loss']:.4f}"
                            + (f" nats per token (perplexity {clean['perplexity']:.4g})." if tokens else "."))
    subset = net.get("evaluation")
    if subset:
        s.paragraphs.append(f"Sections 3 to 6 measure accuracy on the first {subset['inputs']:,} test inputs (as "
                            f"sized for this report), where the clean accuracy is {subset['accuracy']:.4f}; their "
                            "tables and curves start from that figure.")
    if tokens:
        s.paragraphs.append("A sequence model with a label at every token: every accuracy in this report is per "
                            "token, over all positions of the test sequences. By position:")
        acc, loss = tokens["accuracy_by_position"], tokens["loss_by_position"]
        shown = sorted({0, 1, 2, 3, len(acc) // 4, len(acc) // 2, len(acc) - 1} & set(range(len(acc))))
        s.tables.append((["position", "accuracy", "95% CI", "loss (nats)"],
                         [[str(i + 1), f"{acc[i]:.4f}", f"{tokens['accuracy_ci_by_position'][i][0]:.4f}–"
                           f"{tokens['accuracy_ci_by_position'][i][1]:.4f}", f"{loss[i]:.4f}"] for i in shown]))
        s.figures += _figures(tokens, out, {"tokens.png": "clean accuracy at each token position"})
    layers = net.get("sites", [])
    if int8 and not layers:
        s.paragraphs.append("The activations after the quantised layers (crash:PATH:UNITS, act-bitflip:PATH:ber=R "
                            "address them by module path; their values are the stored bytes):")
        layers = [{**h, "index": "–"} for h in int8["activations"]]
    s.tables.append((["site", "name", "units", "kind"],
                     [[str(h["index"]), h["name"], str(h["width"]), h["kind"]] for h in layers]))
    sections.append(s)

    crash = results.get("crash", {})
    s = Section("crash", "2. Crash robustness ([R])")
    if not _skipped(s, crash):
        s.paragraphs.append(f"Measured error Omega_av (mean of ‖F − F_S‖∞ over crash sets and {crash['inputs']} test "
                            "inputs) against the bound Erf_av computed from the weights (SPEC §2). Exact over every "
                            "crash set where affordable; Monte Carlo rows give a 95% CI and their maxima are lower "
                            "bounds.")
        s.tables.append((["layer", "f", "Erf", "Erf_av", "Omega_av", "95% CI", "Omega_max", "exact", "sets"],
                         [[str(r["layer"]), str(r["faults"]), fmt(r["erf"]), fmt(r["erf_av"]), fmt(r["omega_av"]),
                           "–" if not r["omega_av_ci"] else f"{fmt(r['omega_av_ci'][0])}–{fmt(r['omega_av_ci'][1])}",
                           fmt(r["omega_max"]), fmt(r["exact"]), f"{r['sets']:,}" + ("" if r["exact"] else
                                                                                        f" ({r['samples']} sampled)")]
                          for r in crash["rows"]]))
        s.tables.append((["layer", "error budget ε", "tolerated f by Erf", "by Erf_av", "by measured Omega_av"],
                         [[str(t["layer"]), fmt(t["epsilon"]),
                           *(at_least(t[k], t.get("measured_up_to"), t.get("width"))
                             for k in ("erf", "erf_av", "omega_av"))] for t in crash["tolerance"]]))
        if crash.get("certified"):
            s.paragraphs.append("Certified worst case (every crash set, every input; `lesion crash worst`): Omega_max "
                                "bracketed by [lower, upper] — lower attained by a crash set found, upper a proof.")
            s.tables.append((["layer", "f", "Omega_max lower", "Omega_max upper", "certified within ε"],
                             [[str(c["layer"]), str(f), fmt(lo), fmt(hi), fmt(hi <= c["epsilon"])]
                              for c in crash["certified"]
                              for f, lo, hi in zip(c["faults"], c["omega_max_lower"], c["omega_max_upper"],
                                                   strict=True)]))
        s.figures += _figures(crash, out, {"crash.png": "Omega_av (solid) and Erf_av (dashed) against f"})
    sections.append(s)

    geo = results.get("geometry", {})
    s = Section("geometry", "3. Local vulnerability ([G] §3)")
    spec = geo.get("spectrum", {})
    _skipped(s, geo)
    if spec:
        s.paragraphs.append(f"Metric tensor on {_analysis_inputs(spec, geo)}, n = {spec['parameters']:,} parameters: "
                            f"{_trace_text(spec)}, largest eigenvalue {fmt(spec['eigenvalues'][0])}"
                            + (f", rank {spec['rank']}, {_rho_text(spec)} (fraction of the n directions; at most "
                               "m·|X|/n)" if spec.get("rank") is not None else "") + ".")
    att = geo.get("attack")
    if att:
        r = att["random_accuracy"]
        s.tables.append((["perturbation at ‖du‖ = 1", "test accuracy"],
                         [["none (clean)", fmt(att["clean_accuracy"])],
                          [f"random directions (n = {r['n']}): mean [95% CI] (min–max)",
                           f"{fmt(r['mean'])} [{fmt(r['ci'][0])}–{fmt(r['ci'][1])}] ({fmt(r['min'])}–{fmt(r['max'])})"],
                          ["top eigenvector", fmt(att["top_eigenvector_accuracy"])],
                          ["loss gradient", fmt(att["gradient_accuracy"])],
                          ["adversarial (span of the top eigenvectors)", fmt(att["adversarial_accuracy"])]]))
        c = att["collapse"]
        s.paragraphs.append(f"Under the adversarial perturbation {c['share']:.1%} of the test inputs are classified "
                            f"as class {c['class']}.")
        halving = att.get("halving")
        if halving:
            def norm(r: dict) -> str:
                return "not reached" if r["norm"] is None else f"{fmt(r['norm'])} (bracket {fmt(r['bracket'][0])}–" \
                    f"{fmt(r['bracket'][1])})"
            rows = [["adversarial direction", norm(halving["adversarial"])]]
            rows += [[f"random direction {i + 1}", norm(r)] for i, r in enumerate(halving["random"])]
            if halving["random_median"] is not None:
                rows.append(["random directions: median (range)", f"{fmt(halving['random_median'])} "
                             f"({fmt(halving['random_range'][0])}–{fmt(halving['random_range'][1])})"])
            s.tables.append(([f"‖du‖ that halves accuracy (to ≤ {fmt(halving['level'])})", "norm"], rows))
    whole = bool(geo.get("spectrum", {}).get("all_nonzero"))
    s.figures += _figures(geo, out, {"spectrum.png": "sorted eigenvalues of g and their density" if whole
                                     else "the top eigenvalues of g",
                                     "attack.png": "random against designed perturbations"})
    sections.append(s)

    bd = results.get("breakdown", {})
    s = Section("breakdown", "4. Break-down under unit deletion ([G] §4)")
    if not _skipped(s, bd):
        path = bd["path"]
        s.tables.append((["layer", "units", "orders", "measured break-down fraction"],
                         [[c["layer"], f"{c['units']}{' heads' if c.get('kind') == 'attention-head' else ''}",
                           str(c["orders"]), fmt(c["breakdown_fraction"])] for c in bd["curves"]]))
        if path.get("skipped"):
            s.paragraphs.append(f"No deletion path, so no break-down predicted from its covariant acceleration: "
                                f"{path['skipped']}.")
        else:
            predicted = path["predicted_breakdown"]
            s.paragraphs.append("Predicted break-down of the first layer from the covariant acceleration along a "
                                "deletion path (first spike above 10× its start): "
                                + ("no spike along the path" if predicted is None else fmt(predicted)) + ".")
        s.figures += _figures(bd, out, {"breakdown.png": "accuracy against the fraction of units deleted (95% CI over "
                                                         "random orders)" + ("" if path.get("skipped") else
                                                                             " and acceleration along a deletion "
                                                                             "path")})
    sections.append(s)

    rec = results.get("recovery", {})
    s = Section("recovery", "5. Recovery without retraining ([G] §5)")
    if not _skipped(s, rec):
        s.paragraphs.append(f"Damage: {rec['description']}.")
        s.tables.append((["method", "test accuracy", "epoch-equivalents", "seconds"],
                         [[n, fmt(r["accuracy"]), fmt(r["epoch_equivalents"], 3), fmt(r["wall_seconds"], 3)]
                          for n, r in rec["methods"].items()]))
        best = max(rec["methods"].items(), key=lambda item: (item[1]["accuracy"], -item[1]["epoch_equivalents"]))
        s.paragraphs.append(f"Best: {best[0]}, test accuracy {fmt(best[1]['accuracy'])} at "
                            f"{fmt(best[1]['epoch_equivalents'], 3)} epoch-equivalents.")
        s.figures += _figures(rec, out, {"recovery.png": "accuracy against compute"})
    sections.append(s)

    bits = results.get("bitflips", {})
    s = Section("bitflips", "6. Bit-flip sensitivity")
    if not _skipped(s, bits):
        s.tables.append((["bit-error rate", "samples", "mean accuracy", "95% CI", "worst", "failure rate (Wilson CI)"],
                         [[fmt(r["ber"]), str(r["n"]), fmt(r["mean"]), f"{fmt(r['ci'][0])}–{fmt(r['ci'][1])}",
                           fmt(r["min"]), f"{fmt(r['failure_rate']['rate'])} ({fmt(r['failure_rate']['ci'][0])}–"
                                          f"{fmt(r['failure_rate']['ci'][1])})"] for r in bits["rates"]]))
        s.paragraphs.append(f"Bits flip in the format the weights are stored in: {bits.get('format', 'float32')}. "
                            "The first table gives the accuracy at each bit-error rate; the second, the most damaging "
                            f"single bits among {bits['candidates']} candidates (the sign and top exponent bits of the "
                            "largest weights, or an int8 word's top bits).")
        s.tables.append((["parameter", "index", "bit", "before", "after", "accuracy"],
                         [[b["param"], str(b["index"]), f"{b['bit']} ({b['bit_name']})", fmt(b["before"]),
                           fmt(b["after"]), fmt(b["accuracy"])] for b in bits["single_bits"]]))
        s.figures += _figures(bits, out, {"bitflips.png": "accuracy against the bit-error rate"})
    sections.append(s)
    return sections
