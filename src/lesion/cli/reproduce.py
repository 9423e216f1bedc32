"""Sub-command `lesion reproduce FIGURE`: run one of the papers' figure reproductions (lesion.experiments)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lesion.cli.options import add_common

# the figures of lesion.experiments, named here so that `--help` does not import them (and torch);
# tests/test_cli.py checks that the list is the experiments' own
FIGURE_NAMES = ("g-fig2", "g-fig3", "g-fig4", "r-fig10", "r-fig3", "r-fig4", "r-fig5", "r-fig6", "r-fig7")


def _figures() -> dict[str, Any]:
    from lesion.experiments import breakdown_figures, crash_figures, geometry_figures, recovery_figures

    return {**crash_figures.FIGURES, **geometry_figures.FIGURES, **recovery_figures.FIGURES,
            **breakdown_figures.FIGURES}


def _cmd_reproduce(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    result = _figures()[args.figure](out, args.quick)
    pngs = sorted(p.name for p in out.glob(f"{result['figure']}*.png"))
    print(f"{args.figure}: wrote {out / (result['figure'] + '.json')} and {', '.join(pngs)} in {out}")
    for key in ("log_log_slopes", "inversion"):
        if key in result:
            print(f"{key}: {result[key]}")
    for name, net in (result.get("networks") or {}).items() if isinstance(result.get("networks"), dict) else ():
        a = net["attack"]
        print(f"{name}: clean {a['clean_accuracy']:.4f}, random mean {a['random_accuracy']['mean']:.4f} "
              f"(min {a['random_accuracy']['min']:.4f}), adversarial {a['adversarial_accuracy']:.4f}; "
              f"paper: {net['paper']}")
    for net in result.get("networks", []) if isinstance(result.get("networks"), list) else ():
        print(f"dropout {net['dropout']}: test accuracy {net['test_accuracy']:.4f}; tolerates 3 crashes at 0.15: "
              f"{net['tolerates_3_at_0.15']}; 1 crash at 0.03: {net['tolerates_1_at_0.03']}")
    if "paper" in result:
        print(f"paper: {result['paper']}")
    return result


def register(sub: Any) -> None:
    """Add `lesion reproduce` to the `lesion` parser."""
    names = list(FIGURE_NAMES)
    p = sub.add_parser("reproduce", help="reproduce a figure of the papers (JSON and PNG)",
                       description="Reproduce a figure of [R] or [G]: writes FIGURE.json and FIGURE.png into --out. "
                                   f"Figures: {', '.join(names)}.")
    p.add_argument("figure", choices=names, help="which figure")
    p.add_argument("--out", default="figures", help="output folder (default ./figures)")
    p.add_argument("--quick", action="store_true", help="a smaller version (fewer nets, points, epochs)")
    add_common(p)
    p.set_defaults(run=_cmd_reproduce)
