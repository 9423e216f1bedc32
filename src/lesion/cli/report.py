"""Sub-command `lesion report`: the one-command resilience report (issue "The main job")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lesion.cli.options import add_common, add_device, add_executor, output_dir, positive_float
from lesion.errors import LesionError

DEFAULT_NET, DEFAULT_DATA = "mlp2", "mnist5k"


def _default_model(out: Path, seed: int, quick: bool) -> str:
    """Train (or reuse) the default reference network on mnist5k; returns its checkpoint path."""
    from lesion.data import load
    from lesion.nets import build_net, save_checkpoint
    from lesion.train import TrainSettings, train

    path = out / f"default-{DEFAULT_NET}-{'quick' if quick else 'full'}-seed{seed}.pt"
    if path.exists():
        return str(path)
    data = load(DEFAULT_DATA)
    model, config = build_net(DEFAULT_NET, data.input_shape, 10, seed=seed, dropout=0.2)
    history = train(model, data.x_train, data.y_train, TrainSettings(epochs=5 if quick else 20, seed=seed),
                    data.x_test, data.y_test)
    save_checkpoint(path, model, DEFAULT_NET, config, data=data.to_dict(), seed=seed, training=history.to_dict(),
                    metrics={"test_accuracy": history.test.accuracy} if history.test else {})
    return str(path)


def chosen_stages(text: str | None) -> tuple[str, ...]:
    """The stages `--stages` names (all when not given), checked before any model is loaded: an empty list or
    an empty name in it is refused, not read as "all"."""
    from lesion.report.builder import STAGES

    if text is None:
        return STAGES
    stages = tuple(name.strip() for name in text.split(","))
    if not all(stages):
        raise LesionError(f"--stages {text!r} has an empty name; give a comma list of {', '.join(STAGES)}")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise LesionError(f"unknown stage(s) {', '.join(unknown)}: {', '.join(STAGES)}")
    return stages


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    chosen_stages(args.stages)  # a bad list is refused before a model is loaded
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.model or [None]
    if len(models) == 1:
        return _one_report(args, models[0], out)
    from lesion.report.compare import write_comparison

    labels = _labels(models)
    folders = [out / label for label in labels]
    for model, folder, label in zip(models, folders, labels, strict=True):
        print(f"== {label}: {model}")
        _one_report(args, model, folder)
    page = write_comparison(out, folders, labels)
    print(f"side-by-side report written to {page} (each model's own in {', '.join(str(f) for f in folders)})")
    return {"report": str(page), "results": str(out / "results.json"), "models": labels}


def _labels(models: list[str]) -> list[str]:
    """Folder names for the models: their file stems (or preset names), made unique."""
    labels: list[str] = []
    for i, model in enumerate(models, start=1):
        stem = Path(model.split(":")[-1]).stem or f"model-{i}"
        label = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)
        labels.append(label if label not in labels else f"{label}-{i}")
    return labels


def _one_report(args: argparse.Namespace, model: str | None, out: Path) -> dict[str, Any]:
    from lesion.cli.options import prepared
    from lesion.data import load
    from lesion.nets import load_model
    from lesion.report.builder import ReportContext, run_report

    out.mkdir(parents=True, exist_ok=True)
    data_name = args.data
    if model is None:
        if data_name not in (None, DEFAULT_DATA):
            raise LesionError("--data without --model: the default network is trained on mnist5k; give --model too")
        print(f"no --model: training (or reusing) the default {DEFAULT_NET} on {DEFAULT_DATA}")
        model, data_name = _default_model(out, args.seed, args.quick), DEFAULT_DATA
    elif data_name is None:
        raise LesionError("--model needs --data")
    data = load(data_name)
    loaded = load_model(model, args.weights, seed=args.seed)
    loaded, data = prepared(args, loaded, data)
    stages = chosen_stages(args.stages)
    ctx = ReportContext(loaded.module, loaded.to_dict(), data, out, args.quick, args.seed)
    if args.executor not in (None, "local"):  # campaigns and Omega on Ray; the other stages here
        from lesion.scale.executor import executor_for

        ctx.executor = executor_for(args.executor, args.workers, args.gpus_per_task, args.worker_threads)
    try:
        html = run_report(ctx, stages, time_limit=args.time_limit)
    finally:
        if ctx.executor is not None:
            ctx.executor.close()
    print(f"report written to {html} (summary first; also {out / 'report.md'} and {out / 'results.json'})")
    return {"report": str(html), "results": str(out / "results.json")}


def register(sub: Any) -> None:
    """Add `lesion report` to the `lesion` parser."""
    p = sub.add_parser("report", help="one-command resilience report (HTML with plots, JSON)",
                       description="Run the whole analysis — network and data, crash robustness, local vulnerability, "
                                   "break-down, recovery, bit-flip sensitivity — and write DIR/report.html (plots "
                                   "embedded), DIR/results.json and the PNG plots. Without --model, the default "
                                   "reference network is trained on mnist5k (or reused). Finished stages are kept in "
                                   "DIR/stages: an interrupted run resumes from them.")
    p.add_argument("--model", metavar="M", action="append",
                   help="a model (see `lesion evaluate --help`); default: mlp2 on mnist5k. Repeat it to put several "
                        "models side by side: each gets its own report in DIR/<name>, and DIR/report.html compares "
                        "them (same tables, same axes, differences and whether the intervals overlap)")
    p.add_argument("--weights", metavar="FILE", help="state-dict file for --model package.module:factory")
    add_device(p)
    p.add_argument("--data", metavar="D", help="data set (required with --model)")
    p.add_argument("--out", required=True, metavar="DIR", type=output_dir, help="output folder (created if needed)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster report")
    p.add_argument("--time-limit", type=positive_float, default=600.0, metavar="SECONDS",
                   help="before any stage runs, each is estimated; stages are sized down (fewer analysis inputs, "
                        "sites, fault patterns, steps) until the total fits, or the report is refused when even the "
                        "smallest sizes do not fit (default 600)")
    p.add_argument("--stages", help="comma list of stages to run (default all): network,crash,geometry,breakdown,"
                                    "recovery,bitflips")
    add_executor(p)
    add_common(p)
    p.set_defaults(run=_cmd_report)
