"""Sub-commands train, evaluate, campaign, data, nets and demo: parse, call the API, print, return results."""

from __future__ import annotations

import argparse
from typing import Any

from lesion.cli.options import (
    Formatter,
    add_common,
    add_data,
    add_executor,
    add_model,
    fraction,
    load_model_and_data,
    nonnegative_float,
    output_file,
    positive_float,
    positive_int,
    probability,
)
from lesion.errors import LesionError


def _cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.data import load
    from lesion.nets import build_net, save_checkpoint
    from lesion.train import TrainSettings, train

    data = load(args.data)
    if not data.has_labels:
        raise LesionError(f"{args.data} has no labels: training needs labelled data")
    model, config = build_net(args.net, data.input_shape, data.num_classes or 2, seed=args.seed,
                              activation=args.activation, k=args.k, bias=not args.no_bias, dropout=args.dropout)
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             weight_decay=args.weight_decay, seed=args.seed)
    history = train(model, data.x_train, data.y_train, settings, data.x_test, data.y_test)
    test = history.test
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss} if test else {}
    record = {"data": data.to_dict(), "seed": args.seed, "training": history.to_dict(),
              "input_shape": list(data.input_shape), "num_classes": data.num_classes, "metrics": metrics}
    path = save_checkpoint(args.out, model, args.net, config, **record)
    if test:
        print(f"{args.net} on {data.name}: test accuracy {test.accuracy:.4f} "
              f"(95% CI {test.accuracy_ci[0]:.4f}–{test.accuracy_ci[1]:.4f}, n={test.n}), loss {test.loss:.4f}")
    print(f"checkpoint written to {path}")
    return {"checkpoint": str(path), "net": args.net, "config": config, **record}


def _cmd_quantise(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.nets import save_checkpoint
    from lesion.nets.quantise import quantise_int8
    from lesion.train import evaluate_outputs, predict

    loaded, data = load_model_and_data(args)
    meta = loaded.metadata
    if loaded.kind != "lesion-checkpoint" or meta.get("quantised"):
        raise LesionError("quantise takes a float lesion checkpoint (from `lesion train`); quantise your own "
                          "module in Python with lesion.nets.quantise.quantise_int8 and give it to lesion as "
                          "--model package.module:factory")
    quantised = quantise_int8(loaded.module, data.x_train[: args.calibration], args.backend)
    record = {k: v for k, v in meta.items() if k not in ("format", "format_version", "lesion_version", "created",
                                                         "net", "config")}
    record["input_shape"] = list(data.input_shape)
    info: dict[str, Any] = {"backend": args.backend, "calibration_inputs": min(args.calibration, len(data.x_train)),
                            "from": loaded.source}
    if data.has_labels:
        before = evaluate_outputs(predict(loaded.module, data.x_test), data.y_test)
        after = evaluate_outputs(predict(quantised, data.x_test), data.y_test)
        info["test_accuracy"] = {"float": before.accuracy, "int8": after.accuracy}
        print(f"test accuracy: float {before.accuracy:.4f}, int8 {after.accuracy:.4f} (n={after.n})")
    path = save_checkpoint(args.out, quantised, meta.get("net", "model"), meta["config"], **record, quantised=info)
    print(f"int8 checkpoint ({args.backend}, activation ranges from {info['calibration_inputs']} training inputs) "
          f"written to {path}; its weights are stored as int8: damage them with bitflip:...:fmt=int8")
    return {"checkpoint": str(path), "quantised": info}


def _print_evaluation(label: str, result: Any, per_token: bool = False) -> None:
    tail = f", perplexity {result.perplexity:.4g}" if per_token else ""
    print(f"{label}accuracy {result.accuracy:.4f} (95% CI {result.accuracy_ci[0]:.4f}–{result.accuracy_ci[1]:.4f}, "
          f"n={result.n}{' tokens' if per_token else ''}), loss {result.loss:.4f}{tail}")


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from lesion.damage import Target, damaged_outputs, parse_damage, realise
    from lesion.damage.campaign import per_sample_metrics
    from lesion.train import evaluate_outputs, predict

    loaded, data = load_model_and_data(args)
    damages = [parse_damage(text) for text in args.damage or []]
    clean = predict(loaded.module, data.x_test, batch_size=args.batch_size)
    outputs = clean
    out: dict[str, Any] = {"model": loaded.to_dict(), "data": data.to_dict()}
    if damages:
        target = Target(loaded.module, example=data.x_test[:2], inputs=data.x_test)
        import torch

        realised = realise(target, damages, torch.Generator().manual_seed(args.seed))
        outputs = damaged_outputs(loaded.module, realised, data.x_test, batch_size=args.batch_size)
        error, _, _ = per_sample_metrics(outputs, clean, None)
        out["damage"] = {"specs": [d.spec() for d in damages], "faults": list(realised.faults),
                         "output_error": error}
    if args.save_outputs:
        np.save(args.save_outputs, outputs.double().cpu().numpy())
        out["outputs_file"] = args.save_outputs
    if data.has_labels:
        result = evaluate_outputs(clean, data.y_test)
        per_token = data.y_test.dim() == 2
        _print_evaluation("test " if not damages else "clean test ", result, per_token)
        out["evaluation"] = result.to_dict()
        if damages:
            damaged = evaluate_outputs(outputs, data.y_test)
            _print_evaluation("damaged test ", damaged, per_token)
            out["damaged_evaluation"] = damaged.to_dict()
    elif not args.save_outputs and not damages:
        raise LesionError(f"{args.data} has no test labels: accuracy and loss need labels "
                          "(use --save-outputs to get the raw outputs)")
    if damages:
        print(f"mean output error ‖ΔF‖∞ {out['damage']['output_error']:.6g}; faults: "
              + "; ".join(_fault_summary(f) for f in out["damage"]["faults"]))
        broken = int((~torch.isfinite(outputs.reshape(len(outputs), -1)).all(dim=1)).sum())
        if broken:  # say where a nan/inf loss and error come from (they count as misclassified)
            print(f"{broken} of {len(outputs)} inputs gave inf/NaN outputs under this damage (counted as "
                  "misclassified; they make the mean loss and output error inf or NaN)")
    return out


def _fault_summary(fault: dict[str, Any]) -> str:
    count = len(fault["indices"]) if "indices" in fault else fault.get("values", fault.get("count"))
    where = fault.get("site") or fault.get("module") or fault.get("param") or ",".join(fault.get("params", []))
    return f"{fault['kind']} at {where}" + (f" ({count})" if count is not None else "")


def _cmd_campaign(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.cli import campaign_config
    from lesion.damage import parse_damage
    from lesion.damage.campaign import Campaign, load_fault_list, replay, save_fault_list

    loaded, data = load_model_and_data(args)
    fault_list = load_fault_list(args.replay) if args.replay else None
    inputs = args.inputs
    if fault_list is not None and not inputs and fault_list.get("inputs"):  # the inputs it was drawn on
        inputs = fault_list["inputs"]
        if inputs != len(data.x_test):
            print(f"replaying on the first {inputs} test inputs, as the fault list was drawn (--inputs to change)")
    x = data.x_test[:inputs] if inputs else data.x_test
    y = None if data.y_test is None else data.y_test[: len(x)]
    protected = None if fault_list is not None else {}  # a replay: the protection the list records
    if args.protect:
        from lesion.damage import Target
        from lesion.damage.protection import parse_protection

        protected = parse_protection(args.protect, Target(loaded.module, example=x[:2]))
    if args.replay:
        ignored = [option for option, given in (("--damage", args.damage), ("--samples", args.samples),
                                                ("--ci-width", args.ci_width)) if given]
        if ignored:
            verb = "does" if len(ignored) == 1 else "do"
            raise LesionError(f"--replay runs the recorded configurations, all of them: {' and '.join(ignored)} "
                              f"{verb} not apply")
        result = replay(loaded.module, x, y, fault_list, args.tolerance, protected)
    else:
        if not args.damage:
            raise LesionError("give at least one --damage SPEC (or --replay FILE)")
        if (args.samples is None) == (args.ci_width is None):
            raise LesionError("give either --samples N or --ci-width W")
        if args.ci_width is not None and y is not None and args.ci_width >= 1:
            raise LesionError(f"--ci-width {args.ci_width:g} is met before any sample: an interval of the accuracy "
                              "is at most 1 wide (e.g. 0.02 for ±1 point)")
        campaign = Campaign(loaded.module, x, y, [parse_damage(t) for t in args.damage], args.seed, args.tolerance,
                            protected)
        import torch

        from lesion.scale.executor import executor_for

        executor = executor_for(args.executor, args.workers, args.gpus_per_task, args.worker_threads)
        try:
            result = campaign.run(args.samples, args.ci_width, max_samples=args.max_samples, executor=executor,
                                  checkpoint=args.checkpoint)
        finally:
            executor.close()
        if args.executor not in (None, "local"):
            e = result.extra["execution"]
            print(f"{e['executor']}: {e['workers']} workers × {args.worker_threads} torch thread(s), {e['shards']} "
                  f"shards of 64 configurations, {e['retries']} retried, {e['resumed']} resumed from the checkpoint "
                  f"(driver: {torch.get_num_threads()} threads)")
    if args.save_faults:
        save_fault_list(args.save_faults, result)
    n = len(result.samples)
    print(f"{n} configurations of {' + '.join(result.damage)} on {result.inputs} inputs of {data.name}")
    if result.accuracy:
        a = result.accuracy
        print(f"accuracy: clean {result.clean_accuracy:.4f}; damaged mean {a['mean']:.4f} "
              f"(95% CI {a['ci'][0]:.4f}–{a['ci'][1]:.4f}), min {a['min']:.4f}, max {a['max']:.4f}")
        f = result.failure_rate
        print(f"failure rate (accuracy more than {f['tolerance']} below clean): {f['rate']:.4f} "
              f"(95% Wilson CI {f['ci'][0]:.4f}–{f['ci'][1]:.4f})")
    e = result.output_error
    if e["mean"] is None:
        print(f"output error ‖ΔF‖∞: every one of the {e['n']} configurations gave inf/NaN outputs")
    else:
        apart = f"; {e['non_finite']} of {e['n']} configurations gave inf/NaN outputs" if e["non_finite"] else ""
        print(f"output error ‖ΔF‖∞ (mean over inputs, per configuration): {_median_line(e)}, mean {e['mean']:.6g} "
              f"(bootstrap 95% CI {e['ci'][0]:.6g}–{e['ci'][1]:.6g}, finite ones){apart}")
    if result.target_width is not None:
        state = "met" if result.target_met else f"NOT met after {n} samples (raise --max-samples)"
        print(f"target interval width {result.target_width}: {state}; planned ≈{result.planned_samples} samples")
    config = campaign_config.recorded(args)
    if args.replay:
        config = {**config, "damage": list(result.damage), "samples": len(result.samples), "seed": result.seed}
        config.pop("ci_width", None)
    return {"model": loaded.to_dict(), "data": data.to_dict(), "config": config,
            "campaign": result.to_dict(with_samples=True)}


def _median_line(e: dict[str, Any]) -> str:
    """"median X (95% CI a–b)" with the interval's true level where fewer than 6 configurations cannot reach 95%;
    inf/NaN outputs rank above every finite error, so the median is inf when most configurations broke."""
    level = e.get("median_ci_level") or 0.0
    label = "95% CI" if level >= 0.95 else f"{100 * level:.3g}% CI, all that {e['n']} configurations allow"
    lo, hi = e["median_ci"]
    ranked = ", inf/NaN ranked highest" if e["non_finite"] else ""
    return f"median {e['median']:.6g} ({label} {lo:.6g}–{hi:.6g}{ranked})"


def _cmd_sites(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.damage import Target

    loaded, data = load_model_and_data(args)
    target = Target(loaded.module, example=data.x_test[:2])
    sites = target.sites
    print(f"{len(sites)} sites of {args.model} on inputs of shape {tuple(data.x_test.shape[1:])} "
          "(address them by index or name: crash:SITE:UNITS, head:SITE:HEADS, filter:SITE:UNITS)")
    if sites:
        print(f"{'#':>4}  {'name':<44} {'kind':<15} {'units':>6}  {'axis':>4}  layer / note")
    for s in sites:
        extra = s.refused and f"crash refused: {s.refused}" or s.note
        layer = (f"{s.layer}; " if extra else s.layer) if s.layer and s.layer != s.path else ""
        print(f"{s.index:>4}  {s.name:<44} {s.kind:<15} {s.width:>6}  {s.axis:>4}  {layer}{extra}")
    out = {"model": loaded.to_dict(), "data": data.to_dict(), "sites": [s.to_dict() for s in sites]}
    if target.stored:
        out["int8"] = _int8_sites(target)
    return out


def _int8_sites(target: Any) -> dict[str, Any]:
    """What an int8 model offers beside the site table (its quantised layers are not unit layers of it): the
    activations after its quantised layers, addressed by module path, and its stored integer weights."""
    activations = target.int8_activations
    print("\nint8 model: the activations of its quantised layers, by module path (crash:PATH:UNITS, "
          "act-bitflip:PATH:ber=R, act-stuck:PATH:rate=R; their values are the stored bytes):")
    for s in activations:
        print(f"      {s.name:<44} {s.kind:<15} {s.width:>6}  {s.axis:>4}  {s.dtype or ''}")
    print("its stored integer weights (bitflip:NAME:ber=R:fmt=int8, bitflip:NAME:INDEX:BIT:fmt=int8):")
    for name, words in target.stored.items():
        print(f"      {name:<44} {'int8 words':<15} {words.numel():>6}  shape {tuple(words.shape)}")
    return {"activations": [s.to_dict() for s in activations],
            "stored": {name: list(words.shape) for name, words in target.stored.items()}}


def _cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.data import load

    data = load(args.name)
    info = data.to_dict()
    for key, value in info.items():
        print(f"{key}: {value}")
    return info


def _cmd_nets(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.nets import PRESETS, build_net

    rows = {}
    for name in ("mlp1-400", "mlp2", "random-0", "cnn", "vgg11"):
        shape = (3, 32, 32) if name == "vgg11" else None
        model, _ = build_net(name, shape)
        rows[name] = sum(p.numel() for p in model.parameters())
    for name, text in PRESETS.items():
        print(f"{name:16s} {text}")
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return {"presets": PRESETS, "parameters": rows}


def _cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from lesion.experiments.demo import run_demo

    result = run_demo(net=args.net, epochs=args.epochs, sets=args.sets, seed=args.seed)
    print(f"{result.net} trained on {result.data['name']}: clean test accuracy {result.clean_accuracy:.4f}")
    print("layer  crashed/units  accuracy  95% CI (over crash sets)   min–max")
    for p in result.points:
        print(f"{p.layer:5d}  {p.crashed:4d}/{p.width:<8d}  {p.accuracy:.4f}    "
              f"{p.accuracy_ci[0]:.4f}–{p.accuracy_ci[1]:.4f}          {p.accuracy_min:.4f}–{p.accuracy_max:.4f}")
    return result.to_dict()



def register(sub: Any) -> None:
    """Add the sub-commands of this module to the `lesion` parser."""
    from lesion.damage.grammar import SPEC_HELP
    from lesion.nets.catalog import describe_presets

    p = sub.add_parser("train", help="train a reference network and write a checkpoint",
                       description="Train a reference network with Adam on cross-entropy and write a lesion "
                                   "checkpoint recording architecture, data, seed, accuracy and version.")
    p.add_argument("--net", required=True, metavar="NAME", help=f"preset. {describe_presets()}")
    add_data(p)
    p.add_argument("--epochs", type=positive_int, default=20, help="training epochs (default 20)")
    p.add_argument("--dropout", type=fraction, default=0.0, help="dropout rate while training (default 0)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="minibatch size (default 64)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--activation", choices=("relu", "sigmoid", "tanh"), default="relu",
                   help="MLP activation φ (default relu)")
    p.add_argument("--k", type=positive_float, default=1.0, help="activation slope: φ(s) = relu(k·s) or sigmoid(k·s)")
    p.add_argument("--no-bias", action="store_true", help="MLP without biases")
    p.add_argument("--out", required=True, metavar="PATH", type=output_file, help="checkpoint file to write")
    add_common(p)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("quantise", help="int8 copy of a trained network (post-training static quantisation)",
                       description="Quantise a float lesion checkpoint to int8 with PyTorch's post-training static "
                                   "quantisation (torch.ao, eager mode): Linear and convolution weights stored as "
                                   "int8 with per-channel scales, activations as uint8 with ranges observed on "
                                   "calibration inputs from the training split. Writes a lesion checkpoint that "
                                   "every command loads; bit flips with fmt=int8 then flip the stored integers.")
    add_model(p)
    add_data(p)
    p.add_argument("--calibration", type=positive_int, default=256,
                   help="training inputs whose activation ranges set the int8 scales (default 256)")
    p.add_argument("--backend", default="x86", help="torch quantised engine: x86 (default), fbgemm, qnnpack, onednn")
    p.add_argument("--out", required=True, metavar="PATH", type=output_file, help="int8 checkpoint file to write")
    add_common(p)
    p.set_defaults(run=_cmd_quantise)

    damage_help = SPEC_HELP.replace("%", "%%")
    p = sub.add_parser("evaluate", help="test accuracy and loss of a model, clean or damaged",
                       formatter_class=Formatter,
                       description="Accuracy (with a 95% Wilson interval) and cross-entropy loss on the test "
                                   "split of a data set, of the model as it is or with --damage applied (the model "
                                   "file is never changed).")
    add_model(p)
    add_data(p)
    p.add_argument("--batch-size", type=positive_int, default=1000, help="inputs per forward pass")
    p.add_argument("--damage", action="append", metavar="SPEC",
                   help="damage to apply (repeatable; applied in order, random choices from --seed):\n" + damage_help)
    p.add_argument("--save-outputs", metavar="FILE.npy", type=output_file,
                   help="write the (damaged) network's raw outputs on the test inputs as a float64 .npy array")
    add_common(p)
    p.set_defaults(run=_cmd_evaluate)

    p = sub.add_parser("campaign", help="statistical fault campaign", formatter_class=Formatter,
                       description="Draw many damage configurations, evaluate them in vectorised batches and "
                                   "report accuracy, loss and output error with 95% confidence intervals. Sample i "
                                   "is drawn from a seed derived from (--seed, i).")
    add_model(p)
    add_data(p)
    p.add_argument("--damage", action="append", metavar="SPEC", help="damage per configuration (repeatable, "
                   "composed in order):\n" + damage_help)
    p.add_argument("--samples", type=positive_int, help="number of configurations")
    p.add_argument("--ci-width", type=positive_float, metavar="W",
                   help="instead of --samples: stop once the 95%% interval of the mean accuracy (mean output "
                        "error without labels) is at most W wide (at least 30 samples)")
    p.add_argument("--max-samples", type=positive_int, default=10_000, help="cap for --ci-width (default 10000)")
    p.add_argument("--tolerance", type=probability, default=0.05,
                   help="a configuration fails when its accuracy is more than this below clean (default 0.05)")
    p.add_argument("--inputs", type=positive_int, metavar="N", help="use the first N test inputs (default all)")
    p.add_argument("--save-faults", metavar="FILE", type=output_file,
                   help="save the fault list (seeds and faults) as JSON")
    p.add_argument("--replay", metavar="FILE",
                   help="re-run the configurations of a saved fault list (--save-faults), or of a campaign's JSON "
                        "result (--json), which also gives the model, data and options: nothing else needed")
    p.add_argument("--protect", action="append", metavar="PARAM@BITS",
                   help="bit positions random bit flips cannot change (hardened memory), e.g. fc1.weight@30 or "
                        "weights@30,29 (repeatable; `lesion protect` ranks which to choose)")
    add_executor(p)
    p.add_argument("--checkpoint", metavar="FILE", type=output_file,
                   help="record finished batches of configurations in FILE; run the same command again after an "
                        "interrupt to resume from them")
    p.add_argument("--config", metavar="FILE",
                   help="read the campaign's options from a YAML or JSON file: keys model, weights, device, "
                        "output_key, data, damage (a SPEC or a list), samples, ci_width, max_samples, tolerance, "
                        "inputs, seed, protect (a list), save_faults, json, checkpoint, executor, workers, "
                        "worker_threads, gpus_per_task; options on the command line win")
    add_common(p)
    p.set_defaults(run=_cmd_campaign)

    p = sub.add_parser("sites", help="list the sites (units, channels, heads) of a model",
                       description="Find the sites of a model by a recording forward on the data's inputs and list "
                                   "them in execution order: index, name (path, path#CALL for a module run more than "
                                   "once, path@in for a module's input), kind, width and unit axis. Damage and "
                                   "analyses address sites by index or name.")
    add_model(p)
    add_data(p)
    add_common(p)
    p.set_defaults(run=_cmd_sites)

    p = sub.add_parser("data", help="describe a data set", description="Load a data set and describe it.")
    p.add_argument("name", metavar="D", help="data set name or form (see `lesion train --help`)")
    add_common(p)
    p.set_defaults(run=_cmd_data)

    p = sub.add_parser("nets", help="list the reference networks", description="List the preset networks.")
    add_common(p, seed=False)
    p.set_defaults(run=_cmd_nets)

    p = sub.add_parser("demo", help="short end-to-end run on mnist5k",
                       description="Train a network on mnist5k, crash growing shares of its hidden units and "
                                   "print test accuracy before and after.")
    p.add_argument("--net", default="mlp2", metavar="NAME", help="MLP preset to train (default mlp2)")
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default 10)")
    p.add_argument("--sets", type=positive_int, default=10, help="random crash sets per point (default 10)")
    add_common(p)
    p.set_defaults(run=_cmd_demo)
