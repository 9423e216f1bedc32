"""Selective protection (issue 17, item 5): protected draws, the ranking's evidence rule, the counterfactual."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lesion.cli import main
from lesion.damage import Target, parse_damage, realise
from lesion.damage.campaign import CampaignResult, SampleResult
from lesion.damage.protection import choose, parse_protection, predicted_failure_rate, rank
from lesion.data import load
from lesion.errors import LesionError
from lesion.nets import build_net, save_checkpoint
from lesion.train import TrainSettings, train


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3)).eval()


def _flips(config) -> set[int]:
    (fault,) = config.faults
    return set(fault["indices"])


def test_a_protected_draw_is_the_same_draw_less_the_protected_flips():
    model = _mlp()
    plain, guarded = Target(model), Target(model, protected={"0.weight": frozenset({30, 31})})
    sizes = {n: t.numel() for n, t in plain.base.items()}
    removed_total = 0
    for seed in range(20):
        spec = [parse_damage("bitflip:ber=2e-3")]
        before = _flips(realise(plain, spec, torch.Generator().manual_seed(seed)))
        after_config = realise(guarded, spec, torch.Generator().manual_seed(seed))
        after = _flips(after_config)
        # keys are flat·64 + bit over the parameters in order; 0.weight comes first
        removed = {k for k in before if k // 64 < sizes["0.weight"] and k % 64 in (30, 31)}
        assert after == before - removed
        assert after_config.faults[0]["protected"] == len(removed)
        removed_total += len(removed)
    assert removed_total > 0


def test_protection_texts():
    target = Target(_mlp())
    assert parse_protection(["weights@30", "0.bias@1,2"], target) == {
        "0.weight": frozenset({30}), "2.weight": frozenset({30}), "0.bias": frozenset({1, 2})}
    for bad in ["0.weight", "0.weight@40", "@3", "0.weight@x", "nothing@3"]:
        with pytest.raises(LesionError):
            parse_protection([bad], target)


def _result(samples: list[tuple[list[tuple[int, int]], bool]]) -> CampaignResult:
    """A campaign whose sample k flips (flat index, bit) pairs of parameters a (100 values) then b (100 values)
    and fails (accuracy 0.5 against clean 0.9) or not."""
    out = [SampleResult(k, k, ({"kind": "bitflip", "format": "float32", "params": ["a", "b"], "ber": 1e-3,
                                "indices": [f * 64 + b for f, b in flips]},), 0.0, 0.5 if failed else 0.9, 0.0)
           for k, (flips, failed) in enumerate(samples)]
    failures = sum(failed for _, failed in samples)
    return CampaignResult(("bitflip:ber=0.001",), 0, 10, 0.9, tuple(out), {"mean": 0.0}, None, {}, {
        "rate": failures / len(samples), "ci": [0, 1], "failures": failures, "n": len(samples),
        "tolerance": 0.05})


def test_only_groups_that_raise_the_failure_rate_are_ranked():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(400):
        culprit = rng.random() < 0.1  # bit 30 of a: always fails
        flips = [(int(rng.integers(100)), 30)] if culprit else []
        flips += [(100 + int(rng.integers(100)), int(rng.integers(23))) for _ in range(3)]  # b's mantissa: harmless
        samples.append((flips, culprit or rng.random() < 0.02))
    result = _result(samples)
    target = SimpleNamespace(tensors={"a": torch.zeros(100), "b": torch.zeros(100)})
    ranked, total_bits = rank(result, target)
    assert total_bits == 200 * 32
    assert [(g.param, g.bit) for g in ranked] == [("a", 30)]
    chosen = choose(ranked, total_bits, 0.05)
    rate, (lo, hi), remaining = predicted_failure_rate(result, target, chosen)
    coincidental = sum(1 for flips, failed in samples if failed and not any(f < 100 and b == 30 for f, b in flips))
    assert remaining == coincidental and rate == pytest.approx(coincidental / 400) and lo <= rate <= hi
    assert choose(ranked, total_bits, 0.001) == []  # 100 protected bits do not fit in 6.4


def test_cli_protect_predicts_what_the_counterfactual_measures(tmp_path, capsys):
    data = load("digits")
    model, config = build_net("mlp:32", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=5, seed=0))
    path, report = save_checkpoint(tmp_path / "m.pt", model.eval(), "mlp:32", config), tmp_path / "p.json"
    assert main(["--quiet", "protect", "--model", str(path), "--data", "digits", "--damage", "bitflip:ber=2e-5",
                 "--samples", "400", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    chosen = {(g["param"], g["bit"]) for g in result["chosen"]}
    assert chosen and all(bit == 30 for _, bit in chosen)  # the exponent's top bit: ×2^128 or 2^-128
    before = result["campaign"]["failure_rate"]["rate"]
    after = result["counterfactual"]["failure_rate"]["rate"]
    lo, hi = result["predicted"]["ci"]
    assert after < before and lo <= after <= hi and result["counterfactual"]["within_prediction"]
    # the same protection through `lesion campaign --protect` gives the counterfactual's configurations
    again = tmp_path / "c.json"
    protect = [arg for param, bit in sorted(chosen) for arg in ("--protect", f"{param}@{bit}")]
    assert main(["--quiet", "campaign", "--model", str(path), "--data", "digits", "--damage", "bitflip:ber=2e-5",
                 "--samples", "400", *protect, "--json", str(again)]) == 0
    assert json.loads(again.read_text())["campaign"]["failure_rate"]["rate"] == after
