"""Faults in an int8 model's stored integers and activations (issue 17, item 2), against hand edits of the
integers on a copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch

import zoo
from lesion.damage import Target, batched_damaged_outputs, damaged_outputs, parse_damage, realise
from lesion.damage.campaign import Campaign
from lesion.damage.quantised import with_integers
from lesion.errors import LesionError


@pytest.fixture(scope="module")
def int8():
    model, _, x, y = zoo.quantised_cnn()
    return model, x[:300], y[:300]


def _flip_stored(model, name: str, flips: list[tuple[int, int]]):
    """A copy of the quantised `model` with bit b of stored word i of layer `name` flipped, for (i, b) in flips."""
    edited = copy.deepcopy(model)
    layer = edited.get_submodule(name.rsplit(".", 1)[0])
    weight, bias = layer.weight(), layer.bias()
    words = weight.int_repr().clone().view(-1)
    for index, bit in flips:
        byte = int(words[index]) & 0xFF
        flipped = byte ^ (1 << bit)
        words[index] = flipped - 256 if flipped >= 128 else flipped
    layer.set_weight_bias(with_integers(weight, words.view(weight.shape)), bias)
    return edited


def _hooked(model, hook, x):
    """The int8 model's outputs with `hook` editing the output of its first activation (model[1][1])."""
    handle = model[1][1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def test_one_int8_flip_equals_editing_the_stored_integer(int8):
    model, x, _ = int8
    target = Target(model, example=x[:2], inputs=x)
    assert sorted(target.stored) == ["1.0.weight", "1.3.weight", "1.7.weight"]
    config = realise(target, [parse_damage("bitflip:1.0.weight:2,0,1,1:6:fmt=int8")], torch.Generator())
    (fault,) = config.faults
    assert fault["index"] == 2 * 9 + 1 * 3 + 1 and fault["bit_name"] == "magnitude[6]"
    with torch.no_grad():
        expected = _flip_stored(model, "1.0.weight", [(22, 6)])(x)
    torch.testing.assert_close(damaged_outputs(model, config, x), expected, rtol=0, atol=0)
    assert not torch.equal(expected, model(x))


def test_random_int8_flips_equal_hand_edits_from_their_records(int8):
    model, x, _ = int8
    target = Target(model, example=x[:2], inputs=x)
    names = target.match("all", stored=True)
    sizes = [target.stored[n].numel() for n in names]
    configs = [realise(target, [parse_damage("bitflip:ber=2e-4:fmt=int8")], torch.Generator().manual_seed(s))
               for s in range(6)]
    outputs = batched_damaged_outputs(model, configs, x)
    for config, out in zip(configs, outputs, strict=True):
        (fault,) = config.faults
        edited = model
        for key in fault["indices"]:
            flat, bit = divmod(key, 64)
            for name, size in zip(names, sizes, strict=True):
                if flat < size:
                    edited = _flip_stored(edited, name, [(flat, bit)])
                    break
                flat -= size
        with torch.no_grad():
            torch.testing.assert_close(out, edited(x), rtol=0, atol=0)


def test_int8_activation_flips_the_stored_byte(int8):
    model, x, _ = int8
    target = Target(model, example=x[:2], inputs=x)
    config = realise(target, [parse_damage("act-bitflip:1.1:ber=2e-5:fmt=int8")], torch.Generator().manual_seed(1))
    (fault,) = config.faults
    assert fault["entries"]

    def hook(module, args, output):
        words = output.int_repr().contiguous().clone()
        flat = words.view(len(words), -1)
        for i, p, mask in fault["entries"]:
            flat[i, p] = int(flat[i, p]) ^ mask
        return with_integers(output, words)

    torch.testing.assert_close(batched_damaged_outputs(model, [config], x)[0], _hooked(model, hook, x))


def test_crash_and_stuck_units_of_an_int8_model_hold_the_words_of_their_values(int8):
    """A crash at an int8 model's quantised activation (it raised a traceback before) writes the word of 0 (the
    zero point) into the crashed channels; a unit stuck at 0.5 the nearest word, round(0.5 / scale) + zero point;
    against a hook editing the words, for one configuration and for a campaign's batch."""
    model, x, y = int8
    target = Target(model, example=x[:2], inputs=x)
    damages = [parse_damage("crash:1.1:0,3,5"), parse_damage("crash:1.1:2:value=0.5")]
    config = realise(target, damages, torch.Generator())

    def hook(module, args, output):
        words = output.int_repr().clone()
        words[:, [0, 3, 5]] = output.q_zero_point()
        words[:, 2] = round(0.5 / output.q_scale()) + output.q_zero_point()
        return with_integers(output, words)

    expected = _hooked(model, hook, x)
    torch.testing.assert_close(damaged_outputs(model, config, x), expected)
    torch.testing.assert_close(batched_damaged_outputs(model, [config, config], x)[1], expected)
    result = Campaign(model, x, y, [parse_damage("crash:1.1:frac=0.5")], seed=0).run(samples=4)
    assert max(s.accuracy for s in result.samples) < result.clean_accuracy


def test_campaign_on_an_int8_model_leaves_it_as_it_was(int8):
    model, x, y = int8
    before = {n: w.clone() for n, w in Target(model, example=x[:2]).stored.items()}
    result = Campaign(model, x, y, [parse_damage("bitflip:ber=1e-4:fmt=int8")], seed=2).run(samples=12)
    again = Campaign(model, x, y, [parse_damage("bitflip:ber=1e-4:fmt=int8")], seed=2).run(samples=12)
    assert [s.accuracy for s in result.samples] == [s.accuracy for s in again.samples]
    assert min(s.accuracy for s in result.samples) < result.clean_accuracy  # the flips do something
    after = {n: layer.weight().int_repr() for n, layer in ((n, model.get_submodule(n[:-7])) for n in before)}
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_stored_integers_refuse_other_damage_and_formats(int8):
    model, x, _ = int8
    target = Target(model, example=x[:2], inputs=x)
    with pytest.raises(LesionError, match="stores as int8 integers"):
        realise(target, [parse_damage("delete:1.7.weight:frac=0.1")], torch.Generator())
    with pytest.raises(LesionError, match="fmt=int8"):
        realise(target, [parse_damage("bitflip:1.7.weight:0:3:fmt=float32")], torch.Generator())
    with pytest.raises(LesionError, match="follows a quantised layer.*crash:1.1:UNITS"):
        realise(target, [parse_damage("filter:1.1:0,1")], torch.Generator())


def test_cli_quantise_writes_an_int8_checkpoint_every_command_loads(tmp_path, capsys):
    import json

    from lesion.cli import main
    from lesion.data import load
    from lesion.nets import build_net, save_checkpoint
    from lesion.nets.loading import load_model
    from lesion.train import TrainSettings, train

    data = load("digits")
    model, config = build_net("mlp:32", data.input_shape, 10, seed=0)
    train(model, data.x_train, data.y_train, TrainSettings(epochs=3, seed=0))
    float_path, int8_path, report = tmp_path / "f.pt", tmp_path / "q.pt", tmp_path / "q.json"
    save_checkpoint(float_path, model.eval(), "mlp:32", config, input_shape=list(data.input_shape))
    assert main(["--quiet", "quantise", "--model", str(float_path), "--data", "digits", "--out", str(int8_path),
                 "--json", str(report)]) == 0
    accuracy = json.loads(report.read_text())["quantised"]["test_accuracy"]
    loaded = load_model(str(int8_path)).module
    assert sorted(Target(loaded).stored) == ["1.fc1.weight", "1.out.weight"]
    with torch.no_grad():
        measured = float((loaded(data.x_test).argmax(1) == data.y_test).double().mean())
    assert measured == pytest.approx(accuracy["int8"]) and abs(accuracy["int8"] - accuracy["float"]) < 0.05
    capsys.readouterr()
    assert main(["--quiet", "campaign", "--model", str(int8_path), "--data", "digits", "--damage",
                 "bitflip:ber=1e-3:fmt=int8", "--samples", "5"]) == 0
    assert "5 configurations of bitflip:ber=0.001:fmt=int8" in capsys.readouterr().out
    sites = tmp_path / "sites.json"
    assert main(["sites", "--model", str(int8_path), "--data", "digits", "--json", str(sites)]) == 0
    listed = capsys.readouterr().out
    assert "1.act1" in listed and "1.fc1.weight" in listed and "shape (32, 64)" in listed
    int8_sites = json.loads(sites.read_text())["int8"]
    assert [s["name"] for s in int8_sites["activations"]] == ["1.act1"]
    assert int8_sites["activations"][0]["width"] == 32 and int8_sites["stored"]["1.out.weight"] == [10, 32]
    assert main(["--quiet", "campaign", "--model", str(int8_path), "--data", "digits", "--damage",
                 "crash:1.act1:frac=0.5", "--samples", "3"]) == 0  # a traceback before
    assert main(["quantise", "--model", str(int8_path), "--data", "digits", "--out", str(tmp_path / "again.pt")]) == 2
    capsys.readouterr()
    # the metric has no float weights to differentiate: one line, and a report leaves its stages out, saying why
    assert main(["spectrum", "--model", str(int8_path), "--data", "digits", "--inputs", "10", "--top", "3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    out = tmp_path / "report"
    assert main(["--quiet", "report", "--model", str(int8_path), "--data", "digits", "--out", str(out), "--quick",
                 "--stages", "geometry,bitflips"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "no float parameters" in results["geometry"]["skipped"]
    assert results["bitflips"]["format"] == "int8" and results["bitflips"]["single_bits"]


def test_the_model_digest_sees_a_quantised_layers_integers(int8):
    from lesion.nets.loading import model_digest

    model, _, _ = int8
    edited = _flip_stored(model, "1.7.weight", [(0, 0)])
    assert model_digest(edited) != model_digest(model)
    assert model_digest(copy.deepcopy(model)) == model_digest(model)


def test_activation_flips_of_an_int8_model_in_a_wider_format_are_refused():
    # the stored byte is the word: float32 words drawn over 32 bits had 24 of them dropped
    from torch import nn as torch_nn

    from lesion.nets.quantise import quantise_int8

    torch.manual_seed(0)
    model = torch_nn.Sequential(torch_nn.Linear(4, 6), torch_nn.ReLU(), torch_nn.Linear(6, 3)).eval()
    x = torch.randn(40, 4)
    target = Target(quantise_int8(model, x), example=x[:2], inputs=x)
    with pytest.raises(LesionError, match="use fmt=int8"):
        realise(target, [parse_damage("act-bitflip:1.1:ber=0.02:fmt=float32")], torch.Generator().manual_seed(1))
    realise(target, [parse_damage("act-bitflip:1.1:ber=0.02:fmt=int8")], torch.Generator().manual_seed(1))


def test_report_stages_of_an_int8_model_list_its_sites_and_say_why_they_delete_nothing(int8, tmp_path):
    """An int8 model's report listed no site and said "0 trainable parameters", and its recovery section read
    "no site whose deletion lesion can repair: " with nothing after the colon."""
    from lesion.data import load
    from lesion.report.builder import ReportContext, stage_breakdown, stage_network, stage_recovery
    from lesion.report.sections import build_sections

    model, _, _ = int8
    ctx = ReportContext(model, {"digest": "q"}, load("mnist5k"), tmp_path, True)
    network = stage_network(ctx)
    stored = {name: words.numel() for name, words in Target(model).stored.items()}
    assert network["int8"]["stored"] == stored and len(stored) == 3
    assert [s["name"] for s in network["int8"]["activations"]] == [s.name for s in ctx.target.int8_activations]
    assert len(network["int8"]["activations"]) == 2
    for stage in (stage_breakdown, stage_recovery):
        assert "int8 model's layers store integers" in stage(ctx)["skipped"]
    page = build_sections({"network": network}, tmp_path)[0]
    text = " ".join(page.paragraphs)
    assert f"{sum(stored.values()):,} int8 weights in 3 quantised layers" in text
    assert [row[1] for row in page.tables[-1][1]] == [s["name"] for s in network["int8"]["activations"]]
