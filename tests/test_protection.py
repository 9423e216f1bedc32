"""Selective protection (issue 17, item 5): protected draws, the ranking's evidence rule, the counterfactual."""

from __future__ import annotations

import json
import math
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


def _exact_tail(failed: int, hits: int, failed_total: int, n: int) -> float:
    """P(X ≥ failed), X hypergeometric: `hits` configurations drawn from n of which `failed_total` fail (Fisher's
    one-sided exact test), summed from binomial coefficients."""
    return sum(math.comb(failed_total, i) * math.comb(n - failed_total, hits - i)
               for i in range(failed, min(hits, failed_total) + 1)) / math.comb(n, hits)


def test_groups_without_others_to_compare_are_not_ranked():
    """A group every configuration flips had baseline 0 (no others), so any failure made it a cause; one that all
    but a passing configuration flips had baseline 0 too. Neither says anything: the failures are random."""
    rng = np.random.default_rng(1)
    samples = []
    for k in range(200):
        flips = [(int(rng.integers(100)), 3)]  # bit 3 of a: every configuration
        flips += [(int(rng.integers(100)), 5)] if k else []  # bit 5 of a: all but the first, which passes
        flips += [(100 + int(rng.integers(100)), int(rng.integers(23)))]
        samples.append((flips, bool(k) and rng.random() < 0.1))
    result = _result(samples)
    target = SimpleNamespace(tensors={"a": torch.zeros(100), "b": torch.zeros(100)})
    ranked, _ = rank(result, target)
    assert ranked == []
    from lesion.damage.protection import group_evidence

    evidence, _ = group_evidence(result, target)
    by_key = {(g.param, g.bit): g for g in evidence}
    assert by_key[("a", 3)].p_value is None  # nothing to compare with: not tested
    failed_total = sum(failed for _, failed in samples)
    five = by_key[("a", 5)]
    assert (five.hits, five.failures) == (199, failed_total)
    assert five.p_value == pytest.approx(_exact_tail(failed_total, 199, failed_total, 200), rel=1e-9)
    assert five.p_value > 0.5  # 1 − 1/200 of failure-free draws would hold every failure too


def test_the_ranking_is_fishers_exact_test_with_bonferroni():
    rng = np.random.default_rng(2)
    samples = []
    for _ in range(300):
        culprit = rng.random() < 0.08
        flips = [(int(rng.integers(100)), 30)] if culprit else []
        flips += [(int(rng.integers(100)), 20)] if rng.random() < 0.3 else []  # weakly linked below
        flips += [(100 + int(rng.integers(100)), int(rng.integers(8))) for _ in range(2)]
        samples.append((flips, culprit or rng.random() < (0.12 if any(b == 20 for _, b in flips) else 0.05)))
    result = _result(samples)
    target = SimpleNamespace(tensors={"a": torch.zeros(100), "b": torch.zeros(100)})
    from lesion.damage.protection import group_evidence

    evidence, _ = group_evidence(result, target)
    n, failed_total = len(samples), sum(failed for _, failed in samples)
    tested = [g for g in evidence if g.p_value is not None]
    assert len(tested) == len(evidence) == 10
    for g in tested:
        assert g.p_value == pytest.approx(_exact_tail(g.failures, g.hits, failed_total, n), rel=1e-9, abs=1e-300)
        assert g.baseline == pytest.approx((failed_total - g.failures) / (n - g.hits))
    ranked, _ = rank(result, target)
    assert {(g.param, g.bit) for g in ranked} == {(g.param, g.bit) for g in tested if g.p_value < 0.05 / 10}
    assert ("a", 30) in {(g.param, g.bit) for g in ranked}


def _labelled(model: torch.nn.Module, n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, model(x).argmax(1)  # clean accuracy 1


def test_the_causal_check_counts_what_protecting_the_group_alone_cures():
    from lesion.damage.campaign import Campaign, fails
    from lesion.damage.protection import Group, confirm, flipped_groups

    model = _mlp()
    x, y = _labelled(model)
    spec = [parse_damage("bitflip:ber=3e-4")]
    campaign = Campaign(model, x, y, spec, 0, 0.05)
    result = campaign.run(300)
    groups = flipped_groups(result, campaign.target)
    failed = [fails(s.accuracy, 1.0, 0.05) for s in result.samples]
    checked = 0
    for param, bit in [("0.weight", 30), ("2.weight", 30), ("0.weight", 2), ("0.weight", 9)]:
        # independent: a whole campaign with that group alone protected, read at the failing configurations
        alone = Campaign(model, x, y, spec, 0, 0.05, {param: frozenset({bit})}).run(300)
        expected = sum(1 for k in range(300) if failed[k] and (param, bit) in groups[k]
                       and not fails(alone.samples[k].accuracy, 1.0, 0.05))
        group = Group(param, bit, 1, 0, 0)
        assert confirm(campaign, result, group, groups) == expected
        assert confirm(campaign, result, group, groups, range(150)) == sum(
            1 for k in range(150) if failed[k] and (param, bit) in groups[k]
            and not fails(alone.samples[k].accuracy, 1.0, 0.05))
        checked += expected
        if bit == 30:
            assert expected > 0  # the exponent's top bit is the culprit of the configurations it fails
    assert len(campaign.samples) == 300  # the checks leave the campaign's own samples alone
    assert checked > 0
    # a candidate that cures nothing is passed over, and the next one takes its place in the budget
    harmless, culprit = Group("0.weight", 2, 240, 5, 9), Group("2.weight", 30, 120, 9, 9)
    cures = {("0.weight", 2): 0, ("2.weight", 30): 7}
    chosen = choose([harmless, culprit], 12896, 0.02, lambda g: cures[(g.param, g.bit)])
    assert [(g.param, g.bit, g.cured) for g in chosen] == [("2.weight", 30, 7)]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    data = load("digits")
    model, config = build_net("mlp:32", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=5, seed=0))
    path = save_checkpoint(tmp_path_factory.mktemp("protect") / "m.pt", model.eval(), "mlp:32", config)
    return model, data, path


def test_cli_protect_ranks_on_one_part_and_predicts_on_the_held_out_rest(digits_model, tmp_path, capsys):
    from lesion.damage.campaign import Campaign, fails
    from lesion.damage.protection import flipped_groups

    model, data, path = digits_model
    report = tmp_path / "p.json"
    capsys.readouterr()
    assert main(["--quiet", "protect", "--model", str(path), "--data", "digits", "--damage", "bitflip:ber=2e-4",
                 "--samples", "300", "--holdout", "0.4", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["ranked_on"] == 180 and result["predicted"]["n"] == 120 and not result["predicted"]["in_sample"]
    assert "on the 120 held-out configurations" in out and "IN-SAMPLE" not in out
    # independently: the same campaign, counted by hand on each part
    campaign = Campaign(model, data.x_test, data.y_test, [parse_damage("bitflip:ber=2e-4")], 0, 0.05)
    before = campaign.run(300)
    groups = flipped_groups(before, campaign.target)
    failed = [fails(s.accuracy, before.clean_accuracy, 0.05) for s in before.samples]
    chosen = {(g["param"], g["bit"]) for g in result["chosen"]}
    assert chosen
    for g in result["chosen"]:
        key = (g["param"], g["bit"])
        assert g["hits"] == sum(key in groups[k] for k in range(180))  # counted on the first 180 only
        assert g["failures"] == sum(failed[k] and key in groups[k] for k in range(180))
        assert 0 < g["cured"] <= g["failures"]
    remaining = sum(failed[k] and not groups[k] & chosen for k in range(180, 300))
    assert result["predicted"]["failures"] == remaining
    assert result["predicted"]["rate"] == pytest.approx(remaining / 120)
    # the counterfactual, read on the same held-out configurations
    after = Campaign(model, data.x_test, data.y_test, [parse_damage("bitflip:ber=2e-4")], 0, 0.05,
                     {p: frozenset(b for q, b in chosen if q == p) for p, _ in chosen}).run(300)
    still = sum(fails(after.samples[k].accuracy, before.clean_accuracy, 0.05) for k in range(180, 300))
    assert result["counterfactual"]["prediction_set"]["failures"] == still
    # --holdout 0 ranks and predicts on all of them, and says so
    assert main(["--quiet", "protect", "--model", str(path), "--data", "digits", "--damage", "bitflip:ber=2e-4",
                 "--samples", "300", "--holdout", "0", "--json", str(report)]) == 0
    assert "IN-SAMPLE" in capsys.readouterr().out
    again = json.loads(report.read_text())
    assert again["ranked_on"] == 300 and again["predicted"]["in_sample"] and again["predicted"]["n"] == 300
    assert main(["--quiet", "protect", "--model", str(path), "--data", "digits", "--damage", "bitflip:ber=2e-4",
                 "--samples", "2", "--holdout", "0.5"]) == 2  # refused before the campaign: a part would be empty
    assert "--holdout 0" in capsys.readouterr().err


def test_cli_protect_names_each_parameters_bits_in_its_own_format(digits_model, tmp_path, capsys):
    from lesion.damage.bits import bit_name

    _, _, path = digits_model
    report = tmp_path / "p.json"
    formats = {"out.weight": "float32", "fc1.weight": "float16"}
    capsys.readouterr()
    assert main(["--quiet", "protect", "--model", str(path), "--data", "digits",
                 "--damage", "bitflip:out.weight:ber=1e-3", "--damage", "bitflip:fc1.weight:ber=1e-3:fmt=float16",
                 "--samples", "400", "--show", "50", "--json", str(report)]) == 0
    rows = {tuple(line.split()[1:4]) for line in capsys.readouterr().out.splitlines() if "weight" in line}
    # bit 14 of a float16 word is the exponent's top bit (it was named as if float32: mantissa[14])
    assert ("fc1.weight", "14", "exponent[4]") in rows and ("out.weight", "30", "exponent[7]") in rows
    ranking = json.loads(report.read_text())["ranking"]
    assert {g["param"] for g in ranking} == set(formats)
    for g in ranking:
        assert g["fmt"] == formats[g["param"]] and g["field"] == bit_name(formats[g["param"]], g["bit"])
        assert (g["param"], str(g["bit"]), g["field"]) in rows
