"""Reproduction of [G] Fig. 4 (issue "Geodesic recovery", item 5): geodesic recovery against naive deletion,
fine-tuning, prune-then-retrain and OBS, accuracy against compute, and transitions between configurations.

- mlp1-400 trained on mnist5k, 90% of its hidden units deleted ([G] Fig. 3A/4: MLP-1);
- the small CNN trained on fashion-mnist, 12 of the 16 filters of its first conv layer and 96 of the 128
  units of its dense layer deleted (stands in for VGG-11 on CIFAR-10: 50 of 60 filters / 1,000 dense units);
- Fig. 4F: C1 trained → C2 units deleted → C3 more deleted → C4 some restored, along geodesic paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lesion.data import load
from lesion.geometry.damage_set import parse_delete, union
from lesion.geometry.recovery import RecoveryProblem, recover, transitions
from lesion.nets import build_net
from lesion.report.jsonio import provenance, write_json
from lesion.report.plots import Series, line_plot
from lesion.train import TrainSettings, train

CASES = {
    "mlp1-400": {"net": "mlp1-400", "data": "mnist5k", "delete": ["units:1:frac=0.9"], "train_examples": None,
                 "epochs": 20, "budget": 10.0},
    "cnn": {"net": "cnn", "data": "fashion-mnist", "delete": ["units:1:count=12", "units:classifier.fc1:count=96"],
            "train_examples": 10_000, "epochs": 3, "budget": 5.0},
}


# the paper's methods, closed-form compensation alone and followed by one epoch of fine-tuning, and label-free
# distillation alone and after compensation (issue 15)
RECOVERY_METHODS = ("naive", "geodesic", "finetune", "prune-retrain", "obs", "obs-metric", "compensate",
                    "compensate+finetune:0.95", "distill", "compensate+distill:0.5", "compensate+distill:1")


def case_problem(name: str, quick: bool = False, seed: int = 0) -> tuple[RecoveryProblem, dict[str, Any]]:
    """Train the case's network and build its recovery problem."""
    case = CASES[name]
    data = load(case["data"])
    keep = case["train_examples"] if not quick else 3000
    x_train, y_train = data.x_train[:keep], data.y_train[:keep]
    model, _ = build_net(case["net"], data.input_shape, 10, seed=seed, dropout=0.2 if name == "mlp1-400" else 0.0)
    train(model, x_train, y_train, TrainSettings(epochs=case["epochs"] if not quick else 2, seed=seed))
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    damage = union([parse_delete(model, spec, gen) for spec in case["delete"]])
    x_eval, y_eval = data.x_test[:2000], data.y_test[:2000]
    problem = RecoveryProblem(model, x_train, y_train, x_eval, y_eval, damage)
    info = {"net": case["net"], "data": data.name, "train_examples": len(x_train), "eval_examples": len(x_eval),
            "damage": damage.describe(), "delete": case["delete"], "clean_accuracy": problem.evaluate(problem.w0)[0]}
    return problem, info


def run_case(name: str, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """All methods on one case; the geodesic tries β = 0.1, 1, 10 and keeps the shortest path."""
    problem, info = case_problem(name, quick, seed)
    budget = CASES[name]["budget"] if not quick else 1.0
    results, _ = recover(problem, list(RECOVERY_METHODS), budget, seed, {"radius": 1.0, "batch": 32, "max_steps": 400})
    return {**info, "budget_epochs": budget, "methods": {k: v.to_dict() for k, v in results.items()}}


def figure4(out: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """[G] Fig. 4A–D for both cases and Fig. 4F transitions on mlp1-400; JSON and PNGs."""
    cases = {name: run_case(name, quick, seed) for name in CASES}
    for name, case in cases.items():
        methods = case["methods"]
        series = [Series(m, [r["epoch_equivalents"]], [r["accuracy"]], style="o") for m, r in methods.items()]
        line_plot(out / f"g-fig4-{name}-compute.png", series, "epoch-equivalents", "test accuracy",
                  f"[G] Fig. 4C/D: recovery of {name} ({case['damage']})",
                  f"{case['data']}: {case['train_examples']} training and {case['eval_examples']} test examples; "
                  f"clean accuracy {case['clean_accuracy']:.3f}; fine-tuning budget {case['budget_epochs']} epochs")
        geo = methods["geodesic"]
        line_plot(out / f"g-fig4-{name}-path.png",
                  [Series("geodesic path", geo["progress"], geo["path_accuracy"]),
                   Series("naive (end point)", [1.0], [methods["naive"]["accuracy"]], style="x")],
                  "progress towards the damage hyperplane (1 − ‖P_D w‖/‖P_D w_t‖)", "test accuracy",
                  f"[G] Fig. 4A: accuracy along the recovery path, {name}", f"{case['damage']}")
    problem, _ = case_problem("mlp1-400", quick, seed)
    c2 = problem.mask.clone()
    more = parse_delete(problem.model, "units:1:frac=0.95", torch.Generator().manual_seed(seed + 1))
    c3 = c2.clone()
    c3[more.indices] = 0.0
    restored = parse_delete(problem.model, "units:1:frac=0.5", torch.Generator().manual_seed(seed + 2))
    c4 = c3.clone()
    c4[restored.indices] = 1.0  # some deleted units come back with their trained weights
    stages = transitions(problem, [("C2: 90% deleted", c2), ("C3: 95% deleted", c3), ("C4: some restored", c4)],
                         radius=1.0, batch=32, max_steps=400)
    xs, ys, offset = [], [], 0.0
    for stage in stages:
        g = stage["geodesic"]
        xs += [offset + p for p in g["progress"]]
        ys += g["path_accuracy"]
        offset += 1.0
    line_plot(out / "g-fig4f.png", [Series("geodesic transitions", xs, ys, style="-"),
                                   Series("naive", [1, 2, 3], [s["naive_accuracy"] for s in stages], style="x")],
              "stage (C1 → C2 → C3 → C4)", "test accuracy", "[G] Fig. 4F: moving between configurations",
              "mlp1-400 on mnist5k: C2 90% of hidden units deleted, C3 95%, C4 some units of C3 restored")
    result = {"figure": "g-fig4", "cases": cases, "transitions": stages,
              "paper": "geodesic ≤ 10 epochs vs 70 for prune-retrain, keeping accuracy; naive breaks down",
              "provenance": provenance(seed=seed)}
    write_json(out / "g-fig4.json", result)
    return result


FIGURES = {"g-fig4": lambda out, quick: figure4(out, quick)}
