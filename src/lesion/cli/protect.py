"""`lesion protect`: which stored bits to harden, and what hardening them buys (issue 17, item 5)."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import (
    Formatter,
    add_common,
    add_data,
    add_model,
    fraction,
    load_model_and_data,
    positive_int,
    probability,
    share,
)
from lesion.errors import LesionError


def _cmd_protect(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.damage import parse_damage
    from lesion.damage.campaign import Campaign, fails
    from lesion.damage.protection import (
        ALPHA,
        as_protection,
        causes,
        choose,
        confirm,
        flipped_groups,
        group_evidence,
        predicted_failure_rate,
        split,
    )
    from lesion.stats import wilson_interval

    split(args.samples, args.holdout)  # a split that leaves a part empty is refused before any work
    loaded, data = load_model_and_data(args)
    if not data.has_labels:
        raise LesionError(f"{args.data} has no labels: failures are judged by accuracy")
    x = data.x_test[: args.inputs] if args.inputs else data.x_test
    y = data.y_test[: len(x)]
    damages = [parse_damage(t) for t in args.damage]
    first = Campaign(loaded.module, x, y, damages, args.seed, args.tolerance)
    before = first.run(args.samples)
    groups = flipped_groups(before, first.target)  # decoded once, for the ranking and the prediction
    ranking, held = split(len(before.samples), args.holdout)
    in_sample = ranking == held
    evidence, total_bits = group_evidence(before, first.target, groups, ranking)
    ranked = causes(evidence)
    f = before.failure_rate
    print(f"{len(before.samples)} configurations of {' + '.join(before.damage)} on {len(x)} inputs: failure rate "
          f"{f['rate']:.4f} (95% CI {f['ci'][0]:.4f}–{f['ci'][1]:.4f}; accuracy more than {args.tolerance} below "
          f"clean {before.clean_accuracy:.4f})")
    tested = sum(g.p_value is not None for g in evidence)
    everywhere = [f"{g.param}@{g.bit}" for g in evidence if g.p_value is None]
    print(f"ranked on {'all' if in_sample else f'the first {len(ranking)}'} configurations: {tested} (parameter, "
          f"bit) group(s) tested by Fisher's exact test at {ALPHA:g}/{max(tested, 1)} (Bonferroni)"
          + (f"; {len(everywhere)} flipped by every configuration, with none to compare: not ranked "
             f"({', '.join(everywhere[:4])}{' …' if len(everywhere) > 4 else ''})" if everywhere else ""))
    out: dict[str, Any] = {"model": loaded.to_dict(), "data": data.to_dict(),
                           "campaign": before.to_dict(with_samples=False), "total_bits": total_bits,
                           "ranked_on": len(ranking),
                           "tested": tested, "not_compared": everywhere, "ranking": [g.to_dict() for g in ranked]}
    if not ranked:
        print("no (parameter, bit) group makes configurations fail more often than the others: nothing to protect")
        return {**out, "chosen": []}
    checked: dict[tuple[str, int], int] = {}

    def check(group: Any) -> int:  # the causal check: its failing configurations again, it alone protected
        checked[(group.param, group.bit)] = cured = confirm(first, before, group, groups, ranking)
        return cured

    chosen = choose(ranked, total_bits, args.budget, check)
    picked = {(g.param, g.bit) for g in chosen}
    print(f"{'rank':>4}  {'parameter':<28} {'bit':>3}  {'field':<12} {'stored bits':>12} {'share':>7} "
          f"{'failing':>8} {'flipped':>8} {'excess':>7} {'p':>8} {'cured':>6}  chosen")
    for k, g in enumerate(ranked[: args.show], start=1):
        key = (g.param, g.bit)
        mark = "yes" if key in picked else "no: cures none" if key in checked else ""
        cured = str(checked[key]) if key in checked else ""
        print(f"{k:>4}  {g.param:<28} {g.bit:>3}  {g.field:<12} {g.bits:>12,} {g.bits / total_bits:>7.3%} "
              f"{g.failures:>8} {g.hits:>8} {g.excess:>7.1f} {g.p_value:>8.1e} {cured:>6}  {mark}")
    out["ranking"] = [{**g.to_dict(), "cured": checked.get((g.param, g.bit))} for g in ranked]
    out["chosen"] = [g.to_dict() for g in chosen]
    rate, (lo, hi), remaining = predicted_failure_rate(before, first.target, chosen, groups, held)
    spent = sum(g.bits for g in chosen)
    where = ("IN-SAMPLE, on the configurations that chose the protection (optimistic)" if in_sample
             else f"on the {len(held)} held-out configurations")
    print(f"protecting {len(chosen)} group(s), {spent:,} of {total_bits:,} stored bits ({spent / total_bits:.3%}; "
          f"budget {args.budget:.3%}): predicted failure rate {rate:.4f} (95% CI {lo:.4f}–{hi:.4f}) {where}")
    out["predicted"] = {"rate": rate, "ci": [lo, hi], "failures": remaining, "n": len(held),
                        "in_sample": in_sample}
    if chosen:
        after = Campaign(loaded.module, x, y, damages, args.seed, args.tolerance, as_protection(chosen)).run(
            args.samples)
        g = after.failure_rate
        clean = after.clean_accuracy
        assert clean is not None
        again = {s.index: s for s in after.samples}  # the same configurations, by their index
        still = sum(fails(again[before.samples[k].index].accuracy, clean, args.tolerance) for k in held)
        measured = still / len(held)
        inside = lo <= measured <= hi
        print(f"counterfactual campaign (the same configurations, protected flips removed): failure rate "
              f"{g['rate']:.4f} (95% CI {g['ci'][0]:.4f}–{g['ci'][1]:.4f})"
              + ("" if in_sample else f", {measured:.4f} on the held-out configurations") + "; "
              + ("within the predicted interval" if inside else "OUTSIDE the predicted interval"))
        out["counterfactual"] = {**after.to_dict(with_samples=False), "within_prediction": inside,
                                 "prediction_set": {"rate": measured, "ci": list(wilson_interval(still, len(held))),
                                                  "failures": still, "n": len(held)}}
    return out


def register(sub: Any) -> None:
    """Add `lesion protect` to the parser."""
    p = sub.add_parser("protect", help="rank stored bits to harden against bit flips, and measure the gain",
                       formatter_class=Formatter,
                       description="Run a bit-flip campaign; on its first part (see --holdout) test each (parameter, "
                                   "bit position) for failing more often when flipped than not (Fisher's exact test, "
                                   "Bonferroni over the groups), rank the causes by excess failures per protected "
                                   "bit, check each causally (its failing configurations again with it alone "
                                   "protected) and choose them within --budget (a share of all stored bits); predict "
                                   "the failure rate with them protected on the held-out part, and measure it with a "
                                   "second campaign of the same configurations less the protected flips.")
    add_model(p)
    add_data(p)
    p.add_argument("--damage", action="append", required=True, metavar="SPEC",
                   help="random bit flips to rank, e.g. bitflip:ber=1e-6 (repeatable; other damage is applied too "
                        "but not ranked)")
    p.add_argument("--samples", type=positive_int, default=1000, help="configurations per campaign (default 1000)")
    p.add_argument("--budget", type=share, default=0.05,
                   help="share of the stored bits that may be protected (default 0.05)")
    p.add_argument("--tolerance", type=probability, default=0.05,
                   help="a configuration fails when its accuracy is more than this below clean (default 0.05)")
    p.add_argument("--holdout", type=fraction, default=0.5,
                   help="share of the configurations held out from the ranking and its causal checks, on which the "
                        "failure rate with protection is predicted (default 0.5; 0: predict in-sample, on the "
                        "configurations that chose the protection, which is optimistic)")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="use the first N test inputs (default all)")
    p.add_argument("--show", type=positive_int, default=15, help="rows of the ranking to print (default 15)")
    add_common(p)
    p.set_defaults(run=_cmd_protect)
