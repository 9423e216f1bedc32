"""Fault campaigns: reproducible, replayable, stop at the target width; CLI evaluate --damage and campaign."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lesion.cli import main
from lesion.damage import Target, damaged_outputs, parse_damage, realise
from lesion.damage.campaign import Campaign, load_fault_list, replay, sample_seed, save_fault_list
from lesion.data import load
from lesion.errors import LesionError
from lesion.nets import build_net, save_checkpoint
from lesion.stats import RunningMean, sample_size_for_mean, sample_size_for_rate
from lesion.train import TrainSettings, train


@pytest.fixture(scope="module")
def digits_model():
    data = load("digits")
    model, config = build_net("mlp:32", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=8, seed=0))
    return model.eval(), config, data


def test_sample_size_planning_closed_forms():
    # n = (2 z sd / W)²: sd 0.1, W 0.01 → (2·1.96·0.1/0.01)² = 1536.6 → 1537
    assert sample_size_for_mean(0.1, 0.01) == math.ceil((2 * 1.959963984540054 * 0.1 / 0.01) ** 2)
    # rate, worst case p = 0.5, W = 0.02 (±1 point): z²·0.25/0.01² = 9603.6 → 9604 (the textbook figure)
    assert sample_size_for_rate(0.02) == 9604
    with pytest.raises(ValueError):
        sample_size_for_mean(0.1, 0.0)


def test_running_mean_matches_numpy():
    values = np.random.default_rng(0).normal(3.0, 2.0, 257)
    running = RunningMean()
    for v in values:
        running.add(float(v))
    assert running.mean == pytest.approx(values.mean(), rel=1e-12)
    assert running.sd == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (running.min, running.max) == (values.min(), values.max())


def test_campaign_is_reproducible_and_each_sample_replays_alone(digits_model):
    model, _, data = digits_model
    damages = [parse_damage("crash:1:frac=0.5")]
    a = Campaign(model, data.x_test, data.y_test, damages, seed=3).run(samples=40)
    b = Campaign(model, data.x_test, data.y_test, damages, seed=3).run(samples=40)
    c = Campaign(model, data.x_test, data.y_test, damages, seed=4).run(samples=40)
    assert [s.accuracy for s in a.samples] == [s.accuracy for s in b.samples]
    assert [s.accuracy for s in a.samples] != [s.accuracy for s in c.samples]
    # sample 17 alone, from its derived seed, by hand
    s17 = a.samples[17]
    realised = realise(Target(model), damages, torch.Generator().manual_seed(sample_seed(3, 17)))
    outputs = damaged_outputs(model, realised, data.x_test)
    assert s17.accuracy == pytest.approx(float((outputs.argmax(1) == data.y_test).double().mean()), abs=0)
    assert a.accuracy["mean"] == pytest.approx(np.mean([s.accuracy for s in a.samples]), rel=1e-12)
    failures = sum(s.accuracy < a.clean_accuracy - 0.05 for s in a.samples)
    assert a.failure_rate["failures"] == failures


def test_a_configuration_that_changes_nothing_reports_the_clean_figures():
    # timm's ViT is no chain of modules: a campaign runs it through the vectorised forward, whose rounding differs
    # from the clean forward's (4.5e-8 in the outputs); a draw that hits no weight must still report 0 and the
    # clean accuracy exactly
    import zoo

    data = load("mnist5k")
    model = zoo.vit().eval()
    x, y = data.x_test[:64], data.y_test[:64]
    result = Campaign(model, x, y, [parse_damage("bitflip:ber=1e-6")], seed=1).run(samples=12)
    clean = [s for s in result.samples if s.faults[0]["flips"] == 0]
    hit = [s for s in result.samples if s.faults[0]["flips"] > 0]
    assert clean and hit  # 27,978 weights: 0.9 flips a configuration
    assert all(s.output_error == 0.0 and s.accuracy == result.clean_accuracy for s in clean)
    assert any(s.output_error > 0 for s in hit)  # (a flip can also vanish in rounding)
    # a batch in which no draw hits anything takes a shortcut (one clean forward for all): the same exact zeros
    quiet = Campaign(model, x, y, [parse_damage("bitflip:ber=1e-9")], seed=1).run(samples=8)
    assert all(s.faults[0]["flips"] == 0 and s.output_error == 0.0 for s in quiet.samples)


def test_campaign_stops_once_the_interval_is_narrow_enough(digits_model):
    model, _, data = digits_model
    campaign = Campaign(model, data.x_test, data.y_test, [parse_damage("delete:weights:frac=0.3")], seed=0)
    result = campaign.run(ci_width=0.01, batch=16)
    lo, hi = result.accuracy["ci"]
    assert result.target_met and hi - lo <= 0.01
    n = len(result.samples)
    assert 30 <= n < 10_000 and n % 16 == 0
    # it did not overshoot by more than one batch: with 16 fewer samples the target was not met
    shorter = Campaign(model, data.x_test, data.y_test, [parse_damage("delete:weights:frac=0.3")], seed=0)
    earlier = shorter.run(samples=n - 16)
    if n - 16 >= 30:
        assert earlier.accuracy["ci"][1] - earlier.accuracy["ci"][0] > 0.01


def test_fault_list_save_and_replay(digits_model, tmp_path):
    model, _, data = digits_model
    damages = [parse_damage("bitflip:ber=0.0005"), parse_damage("crash:1:count=3")]
    result = Campaign(model, data.x_test, data.y_test, damages, seed=9).run(samples=12)
    path = save_fault_list(tmp_path / "faults.json", result)
    again = replay(model, data.x_test, data.y_test, load_fault_list(path))
    assert [s.accuracy for s in again.samples] == [s.accuracy for s in result.samples]
    other, _ = build_net("mlp:32", data.input_shape, 10, seed=1)
    with pytest.raises(LesionError, match="drawn on model"):
        replay(other, data.x_test, data.y_test, load_fault_list(path))
    tampered = json.loads(path.read_text())
    tampered["samples"][0]["seed"] += 1
    with pytest.raises(LesionError, match="no longer realises"):
        replay(model, data.x_test, data.y_test, tampered)


def test_unlabelled_campaign_reports_output_error_only(digits_model):
    model, _, data = digits_model
    result = Campaign(model, data.x_test[:50], None, [parse_damage("sphere:0.5")], seed=0).run(samples=5)
    assert result.accuracy is None and result.failure_rate is None
    assert result.output_error["mean"] > 0


@pytest.fixture
def checkpoint(digits_model, tmp_path):
    model, config, _ = digits_model
    return save_checkpoint(tmp_path / "m.pt", model, "mlp:32", config)


def test_cli_evaluate_with_damage_and_saved_outputs(checkpoint, digits_model, tmp_path, capsys):
    model, _, data = digits_model
    out, report = tmp_path / "out.npy", tmp_path / "e.json"
    assert main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--damage", "crash:1:0,1,2,3",
                 "--damage", "stuck:out.bias:0:2.5", "--save-outputs", str(out), "--json", str(report)]) == 0
    saved = np.load(out)
    with torch.no_grad():
        hand = build_net("mlp:32", data.input_shape, 10)[0]
        hand.load_state_dict(model.state_dict())
        hand.out.weight[:, :4] = 0.0
        hand.out.bias[0] = 2.5
        expected = hand.eval()(data.x_test).double().numpy()
    np.testing.assert_allclose(saved, expected, atol=1e-6)
    result = json.loads(report.read_text())
    assert result["damage"]["specs"] == ["crash:1:0,1,2,3", "stuck:out.bias:0:2.5"]
    assert result["damaged_evaluation"]["accuracy"] == pytest.approx(
        float((expected.argmax(1) == data.y_test.numpy()).mean()))
    assert "damaged test accuracy" in capsys.readouterr().out


def test_cli_campaign_json_and_replay(checkpoint, tmp_path, capsys):
    report, faults = tmp_path / "c.json", tmp_path / "f.json"
    argv = ["campaign", "--model", str(checkpoint), "--data", "digits", "--damage", "delete:weights:frac=0.2",
            "--samples", "20", "--seed", "5"]
    assert main([*argv, "--json", str(report), "--save-faults", str(faults)]) == 0
    result = json.loads(report.read_text())["campaign"]
    assert result["n_samples"] == 20 and len(result["samples"]) == 20
    assert result["accuracy"]["ci"][0] <= result["accuracy"]["mean"] <= result["accuracy"]["ci"][1]
    replayed = tmp_path / "r.json"
    assert main(["campaign", "--model", str(checkpoint), "--data", "digits", "--replay", str(faults),
                 "--json", str(replayed)]) == 0
    again = json.loads(replayed.read_text())["campaign"]
    assert [s["accuracy"] for s in again["samples"]] == [s["accuracy"] for s in result["samples"]]


def test_cli_replay_keeps_the_recorded_protection_and_inputs(checkpoint, tmp_path, capsys):
    """A fault list drawn under --protect and on --inputs N replays with neither option given: the list records
    both. Under another protection the configurations realise differently, which is named."""
    faults, first, again = tmp_path / "f.json", tmp_path / "a.json", tmp_path / "b.json"
    protect = ["--protect", "fc1.weight@30", "--protect", "out.weight@30"]
    assert main(["--quiet", "campaign", "--model", str(checkpoint), "--data", "digits", "--damage",
                 "bitflip:ber=2e-3", "--samples", "12", "--seed", "4", "--inputs", "150", *protect,
                 "--save-faults", str(faults), "--json", str(first)]) == 0
    recorded = json.loads(faults.read_text())
    assert recorded["protected"] == {"fc1.weight": [30], "out.weight": [30]} and recorded["inputs"] == 150
    assert main(["campaign", "--model", str(checkpoint), "--data", "digits", "--replay", str(faults),
                 "--json", str(again)]) == 0
    assert "first 150 test inputs" in capsys.readouterr().out
    np.testing.assert_array_equal(_per_sample(json.loads(again.read_text())["campaign"]),
                                  _per_sample(json.loads(first.read_text())["campaign"]))
    assert main(["campaign", "--model", str(checkpoint), "--data", "digits", "--replay", str(faults),
                 "--protect", "fc1.weight@29"]) == 2
    assert "replay it without --protect" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["melt:1", "crash:9:1", "crash:1:frac=2", "gauss:-0.5", "delete:fc1.weight:frac=1.5"])
def test_cli_bad_spec_exits_2(checkpoint, spec, capsys):
    assert main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--damage", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lesion: error: ") and "Traceback" not in err


def test_cli_campaign_needs_samples_or_width(checkpoint, capsys):
    assert main(["campaign", "--model", str(checkpoint), "--data", "digits", "--damage", "gauss:0.1"]) == 2
    assert "--samples N or --ci-width W" in capsys.readouterr().err
    assert main(["campaign", "--model", str(checkpoint), "--data", "digits", "--damage", "gauss:0.1",
                 "--ci-width", "5"]) == 2  # an accuracy interval is met before any sample
    assert "at most 1 wide" in capsys.readouterr().err


def _per_sample(result: dict) -> np.ndarray:
    return np.array([[s["accuracy"], s["loss"], s["output_error"]] for s in result["samples"]], dtype=float)


def test_cli_campaign_file_and_replay_from_its_result_alone(checkpoint, tmp_path):
    config = tmp_path / "campaign.yaml"
    config.write_text(f"model: {checkpoint}\ndata: digits\ndamage:\n  - delete:weights:frac=0.1\n"
                      "  - act-bitflip:1:ber=1e-3\nsamples: 15\nseed: 2\ninputs: 200\n")
    first, again = tmp_path / "r1.json", tmp_path / "r2.json"
    assert main(["--quiet", "campaign", "--config", str(config), "--json", str(first)]) == 0
    result = json.loads(first.read_text())
    assert result["config"]["damage"] == ["delete:weights:frac=0.1", "act-bitflip:1:ber=1e-3"]
    assert result["config"]["model"] == str(checkpoint.resolve()) and result["campaign"]["inputs"] == 200
    # nothing but the result: model, data, inputs and faults come from it
    assert main(["--quiet", "campaign", "--replay", str(first), "--json", str(again)]) == 0
    replayed = json.loads(again.read_text())["campaign"]
    np.testing.assert_array_equal(_per_sample(replayed), _per_sample(result["campaign"]))
    # an option on the command line wins over the file's
    fewer = tmp_path / "r3.json"
    assert main(["--quiet", "campaign", "--config", str(config), "--samples", "4", "--json", str(fewer)]) == 0
    assert json.loads(fewer.read_text())["campaign"]["n_samples"] == 4
    # the checkpoint and the executor's options too (they were unknown keys)
    shards = tmp_path / "shards.json"
    config.write_text(config.read_text() + f"checkpoint: {shards}\nexecutor: local\nworker_threads: 1\n")
    assert main(["--quiet", "campaign", "--config", str(config), "--samples", "4", "--json", str(fewer)]) == 0
    assert shards.exists() and json.loads(fewer.read_text())["campaign"]["n_samples"] == 4


def test_cli_replay_refuses_what_it_would_ignore(checkpoint, tmp_path, capsys):
    """A replay runs every recorded configuration: --samples, --ci-width, --damage, --seed are refused, not ignored; a
    missing file is named as such (not as missing --model/--data)."""
    result = tmp_path / "r.json"
    assert main(["--quiet", "campaign", "--model", str(checkpoint), "--data", "digits", "--damage",
                 "crash:1:frac=0.2", "--samples", "3", "--inputs", "50", "--json", str(result)]) == 0
    capsys.readouterr()
    for extra, named in ((["--samples", "2"], "--samples does not apply"),
                         (["--ci-width", "0.1", "--damage", "crash:1:k=1"], "--damage and --ci-width do not apply"),
                         (["--seed", "3"], "--seed does not apply"), (["--seed=3"], "--seed does not apply")):
        assert main(["campaign", "--replay", str(result), *extra]) == 2
        assert named in capsys.readouterr().err
    assert main(["campaign", "--replay", str(tmp_path / "none.json")]) == 2
    assert "no file" in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ("model: M\ndata: digits\nsampels: 10\n", "unknown key(s) 'sampels'"),
    ("- a\n- b\n", "must hold a mapping"),
    ("model: [a, b]\n", "model in"),
    ("damage: {a: 1}\n", "damage in"),
    ("model: M\n  data: : :\n", "not valid YAML"),
])
def test_cli_campaign_file_errors_are_one_line(tmp_path, capsys, body, message):
    config = tmp_path / "c.yaml"
    config.write_text(body)
    assert main(["campaign", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("spec, message", [("act-stuck:99:rate=0.1", "site 99 does not exist"),
                                           ("act-bitflip:1:ber=3", "bit-error rate must be in [0, 1]")])
def test_cli_campaign_file_with_a_bad_site_or_rate(checkpoint, tmp_path, capsys, spec, message):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": str(checkpoint), "data": "digits", "damage": spec, "samples": 3}))
    assert main(["campaign", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_description_that_names_nothing_fails_before_any_forward():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    calls: list[int] = []  # the batch size of each forward of the first layer

    def count(module, inputs, output):
        calls.append(len(inputs[0]))

    model[0].register_forward_hook(count)
    x, y = torch.rand(20, 4), torch.randint(0, 3, (20,))
    with pytest.raises(LesionError, match="no parameter matches 'nope.weight'"):
        Campaign(model, x, y, [parse_damage("bitflip:nope.weight:ber=1e-3")])
    assert 20 not in calls  # no forward over the inputs
    Campaign(model, x, y, [parse_damage("bitflip:0.weight:ber=1e-3")])
    assert 20 in calls  # a valid description goes on to the clean forward over the inputs


def test_a_drop_of_exactly_the_tolerance_is_not_a_failure():
    from fractions import Fraction

    from lesion.damage.campaign import fails

    for n, tolerance in ((20, 0.05), (100, 0.05), (30, 0.1), (1000, 0.02)):
        limit = Fraction(str(tolerance))  # the tolerance as the user wrote it, exactly
        for clean in range(n + 1):
            for damaged in range(0, clean + 1, max(1, n // 50)):
                exact = Fraction(clean - damaged, n) > limit
                assert fails(damaged / n, clean / n, tolerance) == exact, (n, tolerance, clean, damaged)


def test_without_labels_a_met_width_is_the_width_of_the_reported_interval():
    # the stopping rule watched the Student-t width while the result reports the bootstrap interval
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(50, 4)
    width = float(np.linspace(0.005, 0.08, 40)[3])
    result = Campaign(model, x, None, [parse_damage("gauss:1.0")], seed=2).run(ci_width=width, max_samples=1500)
    low, high = result.output_error["ci"]
    assert result.target_met and high - low <= width


def test_labels_of_other_integer_types_are_class_indices_and_one_hot_ones_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(60, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    damage = [parse_damage("crash:1:frac=0.5")]
    reference = [s.accuracy for s in Campaign(model, x, y, damage, seed=1).run(samples=4).samples]
    for labels in (y.to(torch.uint8), y.to(torch.int32), y.float(), y.view(-1, 1)):
        assert [s.accuracy for s in Campaign(model, x, labels, damage, seed=1).run(samples=4).samples] == reference
    for labels, message in ((nn.functional.one_hot(y, 3), "one-hot"), (nn.functional.one_hot(y, 3).float(), "one-hot"),
                            (y.float() + 0.5, "whole numbers")):
        with pytest.raises(LesionError, match=message):
            Campaign(model, x, labels, damage)


def test_a_checkpoint_is_bound_to_its_inputs_labels_and_architecture(digits_model, tmp_path):
    """Found by a review helper: a checkpoint was reused for other inputs of the same count, other labels, and
    the same weights behind another activation (its identity held the input count and the weights only), and
    a damaged file raised a traceback. Each is refused in one line now; the same campaign still resumes."""
    import copy

    model, _, data = digits_model
    x, y = data.x_test[:100], data.y_test[:100]
    damage = [parse_damage("crash:1:frac=0.3")]
    path = tmp_path / "shards.json"
    first = Campaign(model, x, y, damage, seed=1).run(samples=8, batch=4, checkpoint=path)
    again = Campaign(model, x, y, damage, seed=1).run(samples=8, batch=4, checkpoint=path)
    assert [s.accuracy for s in again.samples] == [s.accuracy for s in first.samples]
    tanh = copy.deepcopy(model)
    tanh.act1 = torch.nn.Tanh()
    for other_model, other_x, other_y in ((model, data.x_test[100:200], y), (model, x, (y + 1) % 10),
                                          (tanh, x, y)):
        with pytest.raises(LesionError, match="another campaign"):
            Campaign(other_model, other_x, other_y, damage, seed=1).run(samples=8, batch=4, checkpoint=path)
    payload = json.loads(path.read_text())
    for shards in ([], {"0": None}, {"x": []}, {"0": [{"index": 0}]}):
        path.write_text(json.dumps({**payload, "shards": shards}))
        with pytest.raises(LesionError, match="damaged"):
            Campaign(model, x, y, damage, seed=1).run(samples=8, batch=4, checkpoint=path)
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(LesionError, match="cannot read the campaign checkpoint"):
        Campaign(model, x, y, damage, seed=1).run(samples=8, batch=4, checkpoint=path)
