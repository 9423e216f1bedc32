"""Benchmark: a fault campaign in lesion against pytorchfi, mrfi and hand-written loops, on the same faults.

LeNet-300-100 (mlp2) trained 3 epochs on mnist5k, evaluated on the first 1,000 test inputs; per configuration,
the accuracy. Three scenarios by default, a fourth on request:
- A, float32 weight bit flips at bit-error rate 1e-6 over all parameters (about 8.5 flips per configuration),
  500 configurations by default;
- B, crashes (output 0) of 30% of the units of hidden layer 2 (after act2), 1,000 configurations by default;
- C, transient float32 bit flips in the values of hidden layer 1 (after act1; per input, position and bit) at
  bit-error rate 1e-6 over the 1,000 inputs (about 9.6 flips per configuration), 500 configurations by default.
- D (`--scenarios D`, not in the default): timm's resnet18 from `tests/zoo.py`, float32 weight bit flips at
  bit-error rate 1e-8 (about 3.6 flips per configuration), 100 configurations on 64 test images, against the
  copy loop only (`run_resnet_bitflips`).
lesion runs a `Campaign` (construction and run timed: what a user runs). Each configuration is then realised
again from its seed (`sample_seed(0, i)`, as the campaign does) and that fault list, already converted to each
tool's own input format, is handed to the others; realising and converting it is NOT in their timings. In C
the others set values rather than flip bits: each faulty value (the clean float32 value at act1 with the
configuration's XOR mask applied to its bits; with one faulty site that is the value the fault meets) is
computed in the conversion, from the clean activations.
- copy loop (A): per configuration, copy.deepcopy the model, write the damaged entries, forward all inputs;
- hidden-layer loop (B): the activations after act2 once, then per configuration zero the crashed columns and
  apply `out`;
- hidden-layer loop (C): the activations after act1 once, then per configuration a copy with the faulty values
  written, and fc2, act2, out on all inputs;
- pytorchfi (A): `fault_injection(..., layer_types=[Linear])` once, then per configuration `declare_weight_fi`
  with layer_num/k/dim1 and a `value=` list (it deep-copies the model on every declaration; that is its cost).
  pytorchfi only addresses `.weight`: flips that land in a bias are written into the corrupted model it returns
  (the count of such configurations is printed);
- pytorchfi (B): per configuration `declare_neuron_fi` with one entry per crashed neuron of fc2's output and a
  custom `function=` hook that zeroes those neurons for every input (the `value=` route would need one entry per
  input and neuron, 30,000 a configuration); ReLU(0) = 0, so this equals a crash after act2;
- pytorchfi (C): `fault_injection(..., layer_types=["all"])` (a forward hook on every leaf module; act1 is leaf
  2, after flatten and fc1), then per configuration `declare_neuron_fi` with batch (the input), layer_num, dim1
  (the unit) and a `value=` list, one entry per faulty value. act1 is lesion's ScaledReLU, not a torch.nn.ReLU,
  and pytorchfi reads `.weight` of every module of a listed type when it is constructed, so the activation
  module cannot be listed as a layer type;
- mrfi (A): one `MRFI` wrapper (on a copy of the model) with a weight fault injector on `weight` and `bias` of
  every Linear, selector `FixPositions` (flat indices) and error mode `SetValue` (a value list); per
  configuration the positions and values are set in its config tree (mrfi restores the weights from its own
  copy before every forward, then injects);
- mrfi (B): an `activation_out` injector on act2 with error mode `SetZero` and a small selector registered with
  `mrfi.add_function` that selects the crashed neurons in every input (mrfi's fixed selectors take flat
  positions, 30,000 a configuration);
- mrfi (C): an `activation_out` injector on act1 with selector `FixPositions` (flat positions input * 300 +
  unit over the (1000, 300) output) and error mode `SetValue` (a value list), both set per configuration.
Prints, per scenario, seconds, the ratio (tool time / lesion time) and the number of configurations whose
accuracy differs from lesion's (expected 0). pytorchfi and mrfi are benchmark-only dependencies (`make bench`
installs them without their dependencies).

Every time is the least of `--repeats` runs (default 3), for every tool alike, in rounds (each tool once per
round), so that a slow spell of this shared machine slows every tool alike.

Run: `.venv/bin/python benchmarks/campaign.py [--configs-bitflip 500] [--configs-crash 1000] [--configs-act 500]
[--threads 1] [--skip-peers] [--repeats 3] [--scenarios ABC] [--configs-resnet 100] [--resnet-ber 1e-8]`
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

os.environ.setdefault("LESION_NO_PROGRESS", "1")

import torch  # noqa: E402

from lesion.damage import Target, parse_damage, realise  # noqa: E402
from lesion.damage.campaign import Campaign, sample_seed  # noqa: E402
from lesion.data import load  # noqa: E402
from lesion.devices import resolve_device  # noqa: E402
from lesion.nets import build_net  # noqa: E402
from lesion.train import TrainSettings, train  # noqa: E402

BITFLIP, CRASH = "bitflip:ber=1e-6", "crash:2:frac=0.3"
CRASH_SITE, CRASH_LINEAR = "act2", "fc2"  # the crashed units: act2's output = ReLU(fc2's output)
ACT_SITE = "act1"  # transient bit flips in act1's output (lesion's site address `fc1` resolves there too)
ACT_BITFLIP = f"act-bitflip:{ACT_SITE}:ber=1e-6"
SEED, WARM_UP = 0, 2
PEERS_MISSING = "not importable; `make bench` installs it (pytorchfi==0.6.0, mrfi==2.1.0, pip --no-deps)"


def accuracy(outputs: torch.Tensor, y: torch.Tensor) -> float:
    """Share of inputs classified correctly; non-finite outputs count as wrong (as in lesion's campaigns)."""
    return float(((outputs.argmax(1) == y) & torch.isfinite(outputs).all(1)).double().mean())


def entries(config, base: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The damaged entries of each changed parameter: flat indices and new values."""
    out = dict(config.patches)
    for name, tensor in config.params.items():
        index = torch.ne(tensor, base[name]).reshape(-1).nonzero().flatten()
        out[name] = (index, tensor.reshape(-1)[index])
    return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def timed(run: Callable[[], list[float]]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    accuracies = run()
    return time.perf_counter() - start, accuracies


def lesion_campaign(model, x, y, spec: str, samples: int) -> tuple[list[float], float]:
    result = Campaign(model, x, y, [parse_damage(spec)], seed=SEED).run(samples=samples)
    return [s.accuracy for s in result.samples], result.clean_accuracy


# ---- scenario A: weight bit flips -------------------------------------------------------------------------

def copy_loop(model, x, y, faults: list[dict]) -> list[float]:
    accuracies = []
    for config in faults:
        damaged = copy.deepcopy(model)
        with torch.no_grad():
            params = dict(damaged.named_parameters())
            for name, (index, values) in config.items():
                params[name].view(-1)[index] = values
            accuracies.append(accuracy(damaged(x), y))
    return accuracies


def pytorchfi_faults(model, faults: list[dict]) -> list[tuple[dict, list]]:
    """Per configuration: declare_weight_fi keyword arguments (weights) and (module, flat index, value) (biases)."""
    linears = {name: n for n, (name, _) in enumerate(
        (name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))}
    out = []
    for config in faults:
        layer, k, dim1, value, biases = [], [], [], [], []
        for name, (index, values) in config.items():
            module, kind = name.rsplit(".", 1)
            if kind == "weight":
                columns = model.get_submodule(module).weight.shape[1]
                for i, v in zip(index.tolist(), values.tolist(), strict=True):
                    layer.append(linears[module])
                    k.append(i // columns)
                    dim1.append(i % columns)
                    value.append(v)
            else:
                biases.extend((module, i, v) for i, v in zip(index.tolist(), values.tolist(), strict=True))
        none = [None] * len(layer)
        out.append((dict(layer_num=layer, k=k, dim1=dim1, dim2=none, dim3=list(none), value=value), biases))
    return out


def pytorchfi_weights(model, x, y, faults: list[tuple[dict, list]]) -> list[float]:
    from pytorchfi.core import fault_injection

    pfi = fault_injection(model, len(x), input_shape=list(x.shape[1:]), layer_types=[torch.nn.Linear])
    accuracies = []
    for declared, biases in faults:
        corrupted = pfi.declare_weight_fi(**declared)
        with torch.no_grad():
            for module, i, v in biases:  # pytorchfi injects into `.weight` only
                corrupted.get_submodule(module).bias[i] = v
            accuracies.append(accuracy(corrupted(x), y))
    return accuracies


def mrfi_faults(model, faults: list[dict]) -> list[dict]:
    """Per configuration: (module, weight id) -> (flat positions, values) for every Linear weight and bias."""
    out = []
    for config in faults:
        per = {}
        for module, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                for weight_id, kind in enumerate(("weight", "bias")):
                    index, values = config.get(f"{module}.{kind}", (torch.zeros(0, dtype=torch.long), torch.zeros(0)))
                    per[module, weight_id] = (index.tolist(), values.tolist())
        out.append(per)
    return out


def mrfi_weights(model, x, y, faults: list[dict]) -> list[float]:
    from mrfi import MRFI, EasyConfig

    config = EasyConfig({"faultinject": [{
        "type": "weight", "name": ["weight", "bias"], "module_type": "Linear",
        "selector": {"method": "FixPositions", "positions": []},
        "error_mode": {"method": "SetValue", "value": []}}]})
    fi_model = MRFI(copy.deepcopy(model), config)
    nodes = {key: (fi_model.get_weights_configs("selector.args", weight_id=key[1], module_fullname=key[0])[0],
                   fi_model.get_weights_configs("error_mode.args", weight_id=key[1], module_fullname=key[0])[0])
             for key in faults[0]}
    accuracies = []
    for per in faults:
        for key, (positions, values) in per.items():
            selector, error_mode = nodes[key]
            selector["positions"] = positions
            error_mode["value"] = values
        accuracies.append(accuracy(fi_model(x), y))
    return accuracies


# ---- scenario B: unit crashes -----------------------------------------------------------------------------

def hidden_loop(model, x, y, keeps: list[torch.Tensor]) -> list[float]:
    with torch.no_grad():
        h2 = model.act2(model.fc2(model.act1(model.fc1(model.flatten(x)))))
        return [accuracy(model.out(h2 * keep), y) for keep in keeps]


def pytorchfi_crashes(model, x, y, crashed: list[list[int]]) -> list[float]:
    from pytorchfi.core import fault_injection

    pfi = fault_injection(model, len(x), input_shape=list(x.shape[1:]), layer_types=[torch.nn.Linear])
    layer = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)].index(CRASH_LINEAR)

    def crash(module, inputs, output):  # a custom neuron fault: the declared neurons output 0 for every input
        if pfi.get_current_layer() == layer:
            output[:, pfi.corrupt_dim1] = 0.0
        pfi.updateLayer()
        if pfi.get_current_layer() >= pfi.get_total_layers():
            pfi.reset_current_layer()

    accuracies = []
    for units in crashed:
        none = [None] * len(units)
        corrupted = pfi.declare_neuron_fi(batch=[0] * len(units), layer_num=[layer] * len(units), dim1=units,
                                          dim2=none, dim3=list(none), function=crash)
        with torch.no_grad():
            accuracies.append(accuracy(corrupted(x), y))
    return accuracies


def fixed_neurons(shape: torch.Size, neurons: list[int]) -> torch.Tensor:
    """mrfi selector: the given neurons (dim 1) of every instance (dim 0) of a (instances, neurons) tensor."""
    return (torch.arange(shape[0]).unsqueeze(1) * shape[1] + torch.as_tensor(neurons, dtype=torch.long)).reshape(-1)


def mrfi_crashes(model, x, y, crashed: list[list[int]]) -> list[float]:
    import mrfi

    mrfi.add_function("FixedNeurons", fixed_neurons)
    config = mrfi.EasyConfig({"faultinject": [{
        "type": "activation_out", "module_fullname": CRASH_SITE,
        "selector": {"method": "FixedNeurons", "neurons": []}, "error_mode": {"method": "SetZero"}}]})
    fi_model = mrfi.MRFI(copy.deepcopy(model), config)
    selector = fi_model.get_activation_configs("selector.args", is_out=True, module_fullname=CRASH_SITE)[0]
    accuracies = []
    for units in crashed:
        selector["neurons"] = units
        accuracies.append(accuracy(fi_model(x), y))
    return accuracies


# ---- scenario C: transient activation bit flips ---------------------------------------------------------

def hidden1(model, x) -> torch.Tensor:
    """The clean values of act1's output, (inputs, 300)."""
    with torch.no_grad():
        return model.act1(model.fc1(model.flatten(x)))


def flipped_values(clean: torch.Tensor, configs: list) -> list[tuple[list[int], list[int], list[float]]]:
    """Per configuration: the (input, unit, faulty value) of each faulty value at act1, the faulty value being
    the clean float32 value with the configuration's XOR mask applied to its 32 bits."""
    out = []
    for config in configs:
        (faults,) = config.activations[ACT_SITE]
        assert (faults.site.path, faults.site.hook, faults.fmt) == (ACT_SITE, "output", "float32")
        inputs, units, masks = faults.inputs.cpu(), faults.positions.cpu(), faults.masks.cpu()
        masks = torch.where(masks >= 1 << 31, masks - (1 << 32), masks).to(torch.int32)  # the word's bit pattern
        values = (clean.cpu()[inputs, units].contiguous().view(torch.int32) ^ masks).view(torch.float32)
        out.append((inputs.tolist(), units.tolist(), values.tolist()))
    return out


def hidden1_loop(model, x, y, faults: list[tuple[list[int], list[int], list[float]]]) -> list[float]:
    accuracies = []
    with torch.no_grad():
        h1 = hidden1(model, x)
        for inputs, units, values in faults:
            h = h1.clone()
            h[inputs, units] = torch.tensor(values, dtype=h.dtype, device=h.device)
            accuracies.append(accuracy(model.out(model.act2(model.fc2(h))), y))
    return accuracies


def pytorchfi_activations(model, x, y, faults: list[tuple[list[int], list[int], list[float]]]) -> list[float]:
    from pytorchfi.core import fault_injection

    pfi = fault_injection(model, len(x), input_shape=list(x.shape[1:]), layer_types=["all"])
    layer = [name for name, m in model.named_modules() if not list(m.children())].index(ACT_SITE)
    accuracies = []
    for inputs, units, values in faults:
        none = [None] * len(units)
        corrupted = pfi.declare_neuron_fi(batch=inputs, layer_num=[layer] * len(units), dim1=units, dim2=none,
                                          dim3=list(none), value=values)
        with torch.no_grad():
            accuracies.append(accuracy(corrupted(x), y))
    return accuracies


def mrfi_activations(model, x, y, faults: list[tuple[list[int], list[int], list[float]]]) -> list[float]:
    from mrfi import MRFI, EasyConfig

    config = EasyConfig({"faultinject": [{
        "type": "activation_out", "module_fullname": ACT_SITE,
        "selector": {"method": "FixPositions", "positions": []},
        "error_mode": {"method": "SetValue", "value": []}}]})
    fi_model = MRFI(copy.deepcopy(model), config)
    selector = fi_model.get_activation_configs("selector.args", is_out=True, module_fullname=ACT_SITE)[0]
    error_mode = fi_model.get_activation_configs("error_mode.args", is_out=True, module_fullname=ACT_SITE)[0]
    width = model.fc1.out_features  # act1's values per input (300)
    accuracies = []
    for inputs, units, values in faults:
        flat = [i * width + u for i, u in zip(inputs, units, strict=True)]
        order = sorted(range(len(flat)), key=flat.__getitem__)  # FixPositions checks the last is in range
        selector["positions"] = [flat[k] for k in order]
        error_mode["value"] = [values[k] for k in order]
        accuracies.append(accuracy(fi_model(x), y))
    return accuracies


# ---- driver -----------------------------------------------------------------------------------------------

def peer_available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        print(f"{module} {PEERS_MISSING}: skipped")
        return False
    return True


def scenario(title: str, spec: str, samples: int, model, x, y, tools: list[tuple[str, Callable, Callable]],
             repeats: int = 1) -> list:
    """Time lesion's campaign, realise its fault list again, hand it to each tool, print the table; returns the
    realised configurations. Every tool's time is the least of `repeats` runs, taken in rounds of every tool
    (this shared machine's timings vary by ±20% from run to run, in spells)."""
    lesion_campaign(model, x, y, spec, WARM_UP)
    reference, clean = lesion_campaign(model, x, y, spec, samples)
    target = Target(model, example=x[:2], inputs=x)  # the inputs: for faults drawn per input (C)
    start = time.perf_counter()
    configs = [realise(target, [parse_damage(spec)], torch.Generator().manual_seed(sample_seed(SEED, i)))
               for i in range(samples)]
    t_realise = time.perf_counter() - start
    changed = sum(a != clean for a in reference)
    print(f"\n{title}: {spec}, {samples} configurations x {len(x)} inputs\nlesion mean accuracy "
          f"{sum(reference) / len(reference):.4f} (clean {clean:.4f}; {changed} configurations change it); "
          f"realising the fault list for the others (not timed): {t_realise:.2f} s")
    runners = [("lesion Campaign", lambda: lesion_campaign(model, x, y, spec, samples)[0])]
    for name, convert, run in tools:
        faults = convert(configs)
        try:
            run(model, x, y, faults[:WARM_UP])
        except Exception as err:  # a peer that cannot run here (on a device it does not support, say): say so
            print(f"{name}: fails here, skipped ({type(err).__name__}: {str(err).splitlines()[0][:160]})")
            continue
        runners.append((name, lambda run=run, faults=faults: run(model, x, y, faults)))
    best = {name: float("inf") for name, _ in runners}
    differing = {}
    for _ in range(repeats):  # rounds of every tool in turn: a slow spell of the machine hits them alike
        for name, runner in runners:
            seconds, accuracies = timed(runner)
            best[name] = min(best[name], seconds)
            differing[name] = sum(a != b for a, b in zip(accuracies, reference, strict=True))
    t_lesion = best["lesion Campaign"]
    rows = [(name, best[name], differing[name]) for name, _ in runners]
    print("{:18s} {:>9s} {:>7s} {:>14s}".format("tool", "seconds", "ratio", "differing acc."))
    for name, seconds, differing in rows:
        print(f"{name:18s} {seconds:9.3f} {seconds / t_lesion:6.1f}x {differing:14d}")
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs-bitflip", type=int, default=500)
    parser.add_argument("--configs-crash", type=int, default=1000)
    parser.add_argument("--configs-act", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-peers", action="store_true", help="only lesion and the hand-written loops")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; the least time is kept (default 3)")
    parser.add_argument("--scenarios", default="ABC", help="which scenarios to run, e.g. A (default ABC; D: resnet18)")
    parser.add_argument("--configs-resnet", type=int, default=100)
    parser.add_argument("--resnet-ber", type=float, default=1e-8)
    parser.add_argument("--device", default="cpu", help="where every tool runs: cpu (default) or cuda")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    has_pytorchfi = not args.skip_peers and peer_available("pytorchfi.core")
    has_mrfi = not args.skip_peers and peer_available("mrfi")

    data = load("mnist5k")
    model, _ = build_net("mlp2", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=3, seed=0))
    model.eval().to(device)
    x, y = data.x_test[:1000].to(device), data.y_test[:1000].to(device)
    base = {name: p.detach() for name, p in model.named_parameters()}
    print(f"mlp2 (LeNet-300-100) trained 3 epochs on mnist5k; {len(x)} test inputs; {args.threads} threads; "
          f"device {device_name(device)}")

    if "A" in args.scenarios:
        run_bitflips(args, model, x, y, base, has_pytorchfi, has_mrfi)
    if "B" in args.scenarios:
        run_crashes(args, model, x, y, has_pytorchfi, has_mrfi)
    if "C" in args.scenarios:
        run_activation_flips(args, model, x, y, has_pytorchfi, has_mrfi)
    if "D" in args.scenarios:
        run_resnet_bitflips(args, data, device)


def run_resnet_bitflips(args, data, device: torch.device) -> None:
    """Scenario D: timm's resnet18 (`tests/zoo.py`, for 1×28×28 inputs, untrained: its accuracies are chance,
    the check that lesion and the copy loop agree configuration by configuration still holds) against the copy
    loop, weight bit flips at `--resnet-ber` over every parameter, on the first 64 test images."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import zoo

    model = zoo.resnet18().eval().to(device)
    x, y = data.x_test[:64].reshape(-1, 1, 28, 28).to(device), data.y_test[:64].to(device)
    base = {name: p.detach() for name, p in model.named_parameters()}
    tools = [("copy loop", lambda cs: [entries(c, base) for c in cs], copy_loop)]
    scenario("D, resnet18 weight bit flips", f"bitflip:ber={args.resnet_ber:g}", args.configs_resnet, model, x, y,
             tools, args.repeats)


def run_bitflips(args, model, x, y, base, has_pytorchfi: bool, has_mrfi: bool) -> None:
    """Scenario A."""
    def bitflip_faults(configs):
        return [entries(c, base) for c in configs]

    tools = [("copy loop", bitflip_faults, copy_loop)]
    if has_pytorchfi:
        tools.append(("pytorchfi", lambda cs: pytorchfi_faults(model, bitflip_faults(cs)), pytorchfi_weights))
    if has_mrfi:
        tools.append(("mrfi", lambda cs: mrfi_faults(model, bitflip_faults(cs)), mrfi_weights))
    configs = scenario("A, weight bit flips", BITFLIP, args.configs_bitflip, model, x, y, tools, args.repeats)
    if has_pytorchfi:
        in_bias = sum(any(n.endswith(".bias") for n in c.changed) for c in configs)
        print(f"(pytorchfi: {in_bias} configurations with a flip in a bias, written outside its API)")


def run_crashes(args, model, x, y, has_pytorchfi: bool, has_mrfi: bool) -> None:
    """Scenario B."""
    def crashed_units(configs):
        return [(c.units[CRASH_SITE].keep == 0).nonzero().flatten().tolist() for c in configs]

    tools = [("hidden-layer loop", lambda cs: [c.units[CRASH_SITE].keep for c in cs], hidden_loop)]
    if has_pytorchfi:
        tools.append(("pytorchfi", crashed_units, pytorchfi_crashes))
    if has_mrfi:
        tools.append(("mrfi", crashed_units, mrfi_crashes))
    scenario("B, unit crashes", CRASH, args.configs_crash, model, x, y, tools, args.repeats)


def run_activation_flips(args, model, x, y, has_pytorchfi: bool, has_mrfi: bool) -> None:
    """Scenario C."""
    clean_h1 = hidden1(model, x).cpu()

    def act_faults(configs):
        return flipped_values(clean_h1, configs)

    tools = [("hidden-layer loop", act_faults, hidden1_loop)]
    if has_pytorchfi:
        tools.append(("pytorchfi", act_faults, pytorchfi_activations))
    if has_mrfi:
        tools.append(("mrfi", act_faults, mrfi_activations))
    configs = scenario("C, transient activation bit flips", ACT_BITFLIP, args.configs_act, model, x, y, tools,
                       args.repeats)
    flips = sum(len(f[0]) for f in act_faults(configs))
    print(f"({flips / max(len(configs), 1):.1f} faulty values per configuration on average)")


if __name__ == "__main__":
    main()
