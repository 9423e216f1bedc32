"""The report's summary and the side-by-side page, on stage results written here (independent of any run)."""

import json

import pytest

from lesion.cli import main
from lesion.nets import build_net, save_checkpoint
from lesion.report.compare import comparison_rows, overlap
from lesion.report.scorecard import ber_at_failure, build_scorecard, tolerated_fraction


def rate(ber, value, lo, hi):
    return {"ber": ber, "failure_rate": {"rate": value, "ci": [lo, hi]}}


def test_ber_at_failure_interpolates_in_log_rate():
    rates = [rate(1e-6, 0.0, 0.0, 0.02), rate(1e-5, 0.02, 0.01, 0.05), rate(1e-4, 0.5, 0.4, 0.6)]
    value, interval, note = ber_at_failure(rates, 0.01)
    assert value == pytest.approx(10 ** -5.5) and note == ""
    # the upper Wilson bound is at 2% already at 1e-6: that end lies below the rates tried; the lower bound
    # reaches 1% at 1e-5
    assert interval[0] is None and interval[1] == pytest.approx(1e-5)
    assert ber_at_failure(rates, 0.03)[1] == [pytest.approx(10 ** (-6 + 1 / 3)), pytest.approx(10 ** (-5 + 0.2 / 3.9))]
    value, _, note = ber_at_failure(rates, 0.9)
    assert value is None and "above 0.0001" in note
    assert "below" in ber_at_failure([rate(1e-6, 0.3, 0.2, 0.4)], 0.1)[2]


def test_tolerated_fraction_reads_the_curve_and_its_band():
    curve = {"clean_accuracy": 1.0, "fractions": [0, 0.5, 1.0], "accuracy": [1.0, 0.8, 0.2],
             "accuracy_ci": [[0.95, 1.0], [0.7, 0.95], [0.1, 0.3]]}
    value, interval = tolerated_fraction(curve)
    assert value == pytest.approx(0.25)  # 1.0 → 0.8 crosses 0.9 half-way
    assert interval == [pytest.approx(0.5 * 0.05 / 0.25), pytest.approx(0.5 + 0.5 * 0.05 / 0.65)]


def test_scorecard_skips_what_did_not_run_and_names_the_best_repair():
    results = {"network": {"clean": {"accuracy": 0.9, "accuracy_ci": [0.88, 0.92], "n": 1000}},
               "breakdown": {"skipped": "no labels"},
               "recovery": {"methods": {"naive": {"accuracy": 0.5, "epoch_equivalents": 0.0},
                                        "finetune": {"accuracy": 0.8, "epoch_equivalents": 3.0},
                                        "compensate": {"accuracy": 0.8, "epoch_equivalents": 0.01}}}}
    card = {e["key"]: e for e in build_scorecard(results)}
    assert "not computed: no labels" in card["tolerated_deletion"]["text"]
    assert card["best_recovery"]["value"] == "compensate"  # same accuracy, less compute
    assert card["best_recovery"]["regained"] == pytest.approx(0.75)


def test_comparison_rows_difference_and_overlap():
    a = [{"key": "k", "label": "x", "value": 0.5, "interval": [0.4, 0.6], "text": "", "section": "s"},
         {"key": "only_a", "label": "y", "value": 1, "interval": None, "text": "", "section": "s"}]
    b = [{"key": "k", "label": "x", "value": 0.8, "interval": [0.7, 0.9], "text": "", "section": "s"}]
    rows = comparison_rows([a, b])
    assert len(rows) == 1 and rows[0]["differences"] == [pytest.approx(0.3)]
    assert rows[0]["overlaps_first"] == [False]
    assert overlap([0, 1], [1, 2]) is True and overlap(None, [0, 1]) is None


def test_two_models_side_by_side(tmp_path):
    for name, dropout in (("a", 0.0), ("b", 0.3)):
        model, config = build_net("mlp:12", (64,), 10, seed=0, dropout=dropout)
        save_checkpoint(tmp_path / f"{name}.pt", model, "mlp:12", config)
    out = tmp_path / "cmp"
    assert main(["report", "--model", str(tmp_path / "a.pt"), "--model", str(tmp_path / "b.pt"), "--data", "digits",
                 "--quick", "--stages", "network,breakdown,bitflips", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == ["a", "b"]
    own = [json.loads((out / m / "results.json").read_text()) for m in ("a", "b")]
    row = next(r for r in results["comparison"] if r["key"] == "clean_accuracy")
    assert row["values"] == [o["network"]["clean"]["accuracy"] for o in own]
    assert row["differences"][0] == pytest.approx(row["values"][1] - row["values"][0])
    page = (out / "report.html").read_text()
    assert "a/report.html" in page and page.count("<img ") >= 2  # deletion curves and bit flips, shared axes


def test_halving_entry_says_larger_when_the_designed_direction_needs_more():
    base = {"directions": 4, "random_reached": 4, "random_range": [2.0, 8.0], "random_median": 5.0}

    def attack(norm):
        return {"geometry": {"attack": {"random_accuracy": {"mean": 0.9, "ci": [0.89, 0.91]},
                                        "adversarial_accuracy": 0.5,
                                        "halving": {**base, "adversarial": {"norm": norm}}}}}

    (entry,) = [e for e in build_scorecard(attack(0.25)) if e["key"] == "halving_norm"]
    assert "(20× smaller)" in entry["text"]
    (entry,) = [e for e in build_scorecard(attack(50.0)) if e["key"] == "halving_norm"]
    assert "(10× larger: the designed direction does no better than random here)" in entry["text"]


def test_the_summary_shows_one_sided_intervals():
    from lesion.report.sections import summary_section

    card = [{"key": "ber_failure_1pct", "label": "bit-error rate at 1% failures", "value": 8e-7, "text": "8e-07",
             "section": "bitflips", "interval": [None, 1.23e-6]},
            {"key": "a", "label": "a", "value": 0.5, "text": "0.5", "section": "network", "interval": [0.25, None]},
            {"key": "b", "label": "b", "value": 0.5, "text": "0.5", "section": "network", "interval": [None, None]}]
    rows = summary_section(card).tables[0][1]
    assert [row[2] for row in rows] == ["≤ 1.230e-06", "≥ 0.2500", "–"]
