"""`lesion protect`: which stored bits to harden, and what hardening them buys (issue 17, item 5)."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import (
    Formatter,
    add_common,
    add_data,
    add_model,
    load_model_and_data,
    positive_int,
    probability,
    share,
)
from lesion.errors import LesionError


def _cmd_protect(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.damage import parse_damage
    from lesion.damage.bits import bit_name
    from lesion.damage.campaign import Campaign
    from lesion.damage.protection import as_protection, choose, flipped_groups, predicted_failure_rate, rank

    loaded, data = load_model_and_data(args)
    if not data.has_labels:
        raise LesionError(f"{args.data} has no labels: failures are judged by accuracy")
    x = data.x_test[: args.inputs] if args.inputs else data.x_test
    y = data.y_test[: len(x)]
    damages = [parse_damage(t) for t in args.damage]
    first = Campaign(loaded.module, x, y, damages, args.seed, args.tolerance)
    before = first.run(args.samples)
    groups = flipped_groups(before, first.target)  # decoded once, for the ranking and the prediction
    ranked, total_bits = rank(before, first.target, groups)
    chosen = choose(ranked, total_bits, args.budget)
    f = before.failure_rate
    print(f"{len(before.samples)} configurations of {' + '.join(before.damage)} on {len(x)} inputs: failure rate "
          f"{f['rate']:.4f} (95% CI {f['ci'][0]:.4f}–{f['ci'][1]:.4f}; accuracy more than {args.tolerance} below "
          f"clean {before.clean_accuracy:.4f})")
    if not ranked:
        print("no (parameter, bit) group makes configurations fail more often than the others: nothing to protect")
        return {"campaign": before.to_dict(with_samples=False), "ranking": [], "chosen": []}
    formats = {fault["params"][0]: fault["format"] for s in before.samples for fault in s.faults
               if fault.get("kind") == "bitflip" and fault.get("params")}
    fmt = next(iter(formats.values()), "float32")
    print(f"{'rank':>4}  {'parameter':<28} {'bit':>3}  {'field':<12} {'stored bits':>12} {'share':>7} "
          f"{'failing':>8} {'flipped':>8} {'excess':>7}  chosen")
    for k, g in enumerate(ranked[: args.show], start=1):
        mark = "yes" if g in chosen else ""
        print(f"{k:>4}  {g.param:<28} {g.bit:>3}  {bit_name(fmt, g.bit):<12} {g.bits:>12,} "
              f"{g.bits / total_bits:>7.3%} {g.failures:>8} {g.hits:>8} {g.excess:>7.1f}  {mark}")
    rate, (lo, hi), remaining = predicted_failure_rate(before, first.target, chosen, groups)
    spent = sum(g.bits for g in chosen)
    print(f"protecting {len(chosen)} group(s), {spent:,} of {total_bits:,} stored bits ({spent / total_bits:.3%}; "
          f"budget {args.budget:.3%}): predicted failure rate {rate:.4f} (95% CI {lo:.4f}–{hi:.4f})")
    out: dict[str, Any] = {"model": loaded.to_dict(), "data": data.to_dict(),
                           "campaign": before.to_dict(with_samples=False), "total_bits": total_bits,
                           "ranking": [g.to_dict() for g in ranked], "chosen": [g.to_dict() for g in chosen],
                           "predicted": {"rate": rate, "ci": [lo, hi], "failures": remaining}}
    if chosen:
        after = Campaign(loaded.module, x, y, damages, args.seed, args.tolerance, as_protection(chosen)).run(
            args.samples)
        g = after.failure_rate
        inside = lo <= g["rate"] <= hi
        print(f"counterfactual campaign (the same configurations, protected flips removed): failure rate "
              f"{g['rate']:.4f} (95% CI {g['ci'][0]:.4f}–{g['ci'][1]:.4f}); "
              + ("within the predicted interval" if inside else "OUTSIDE the predicted interval"))
        out["counterfactual"] = {**after.to_dict(with_samples=False), "within_prediction": inside}
    return out


def register(sub: Any) -> None:
    """Add `lesion protect` to the parser."""
    p = sub.add_parser("protect", help="rank stored bits to harden against bit flips, and measure the gain",
                       formatter_class=Formatter,
                       description="Run a bit-flip campaign, charge each (parameter, bit position) with the failing "
                                   "configurations that flipped it, choose the groups with the most failures per "
                                   "protected bit within --budget (a share of all stored bits), predict the failure "
                                   "rate with them protected, and measure it with a second campaign of the same "
                                   "configurations less the protected flips.")
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
    p.add_argument("--inputs", type=positive_int, metavar="N", help="use the first N test inputs (default all)")
    p.add_argument("--show", type=positive_int, default=15, help="rows of the ranking to print (default 15)")
    add_common(p)
    p.set_defaults(run=_cmd_protect)
