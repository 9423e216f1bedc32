"""Loading a user's model in every accepted form; validation; every bad input is a LesionError."""

import textwrap

import pytest
import torch
from torch import nn

from lesion.errors import LesionError
from lesion.nets import build_net, load_model, model_digest, save_checkpoint, validate_model

X = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def mlp() -> nn.Module:
    model, _ = build_net("mlp:12", seed=3)
    return model.eval()


def test_lesion_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model, config = build_net("cnn", seed=1)
    model.eval()
    path = save_checkpoint(tmp_path / "c.pt", model, "cnn", config, seed=1, metrics={"test_accuracy": 0.5})
    loaded = load_model(str(path))
    assert loaded.kind == "lesion-checkpoint"
    assert loaded.metadata["net"] == "cnn" and loaded.metadata["metrics"]["test_accuracy"] == 0.5
    assert torch.equal(loaded.module(X), model(X))
    assert loaded.digest == model_digest(model)
    assert not list(tmp_path.glob("*.tmp"))


def test_whole_module_saved_with_torch_save(tmp_path, mlp):
    torch.save(mlp, tmp_path / "whole.pt")
    loaded = load_model(str(tmp_path / "whole.pt"))
    assert loaded.kind == "torch-module"
    assert torch.equal(loaded.module(X), mlp(X))


def test_torchscript_file(tmp_path, mlp):
    torch.jit.save(torch.jit.trace(mlp, X), tmp_path / "ts.pt")
    loaded = load_model(str(tmp_path / "ts.pt"))
    assert loaded.kind == "torchscript"
    assert torch.equal(loaded.module(X), mlp(X))


def test_exported_program_with_dynamic_batch(tmp_path, mlp):
    batch = torch.export.Dim("batch")
    program = torch.export.export(mlp, (X,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    assert loaded.kind == "exported-program"
    torch.testing.assert_close(loaded.module(X[:3]), mlp(X[:3]))


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent("""
        from torch import nn

        def build():
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))

        def not_a_model():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_factory_with_state_dict(user_package):
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    weights = user_package / "w.pt"
    torch.save(reference.state_dict(), weights)
    loaded = load_model("userpkg.models:build", str(weights))
    assert loaded.kind == "factory"
    assert torch.equal(loaded.module(X), reference(X))


def test_factory_failures(user_package):
    with pytest.raises(LesionError, match="cannot import"):
        load_model("nosuchpkg.models:build")
    with pytest.raises(LesionError, match="has no 'nope'"):
        load_model("userpkg.models:nope")
    with pytest.raises(LesionError, match="not a torch.nn.Module"):
        load_model("userpkg.models:not_a_model")
    wrong = user_package / "wrong.pt"
    torch.save({"0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(LesionError, match="do not fit"):
        load_model("userpkg.models:build", str(wrong))
    with pytest.raises(LesionError, match="not found"):
        load_model("userpkg.models:build", str(user_package / "missing.pt"))


def test_missing_corrupt_and_state_dict_files(tmp_path, mlp):
    with pytest.raises(LesionError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(LesionError, match="cannot read model file"):
        load_model(str(corrupt))
    truncated = tmp_path / "truncated.pt"
    torch.save(mlp, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(LesionError):
        load_model(str(truncated))
    state = tmp_path / "state.pt"
    torch.save(mlp.state_dict(), state)
    with pytest.raises(LesionError, match="state dict"):
        load_model(str(state))


def test_validation_reports_nan_weights_and_wrong_shapes(mlp):
    assert validate_model(mlp, X, 10) == 10
    with pytest.raises(LesionError, match="does not run on inputs of shape"):
        validate_model(mlp, torch.zeros(4, 3, 32, 32))
    with pytest.raises(LesionError, match="has 10 outputs but"):
        validate_model(mlp, X, num_classes=12)
    broken, _ = build_net("mlp:12")
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("nan")
        broken.out.bias[1] = float("inf")
    with pytest.raises(LesionError, match=r"NaN/inf weights in fc1.weight \(1\), out.bias \(1\)"):
        validate_model(broken, X)


def test_model_returning_a_non_matrix_is_refused():
    with pytest.raises(LesionError, match="must return a"):
        validate_model(nn.Flatten(0), X)


def test_a_float16_model_runs_on_float32_data_flips_its_own_bits_and_is_judged_in_float16(tmp_path):
    """A torch.save'd float16 model: the data's float32 inputs are cast to it (clean accuracy equals a hand
    forward on x.half()), bit flips default to its float16 words, and recovery scores repaired weights rounded
    to float16 (`FlatModel.stored`)."""
    import json

    from lesion.cli import main
    from lesion.data import load
    from lesion.geometry.flat import FlatModel
    from lesion.nets import prepare_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).half().eval()
    torch.save(model, tmp_path / "m16.pt")
    data = load("digits")
    report = tmp_path / "c.json"
    assert main(["--quiet", "campaign", "--model", str(tmp_path / "m16.pt"), "--data", "digits", "--damage",
                 "bitflip:ber=1e-3", "--samples", "3", "--json", str(report)]) == 0
    result = json.loads(report.read_text())["campaign"]
    with torch.no_grad():
        hand = (model(data.x_test.half()).argmax(1) == data.y_test).double().mean().item()
    assert result["clean_accuracy"] == pytest.approx(hand, abs=1e-12)
    formats = {f["format"] for s in result["samples"] for f in s["faults"]}
    assert formats == {"float16"}
    view, _ = prepare_model(model, data.x_test, 10)
    flat = FlatModel(view, data.x_test[:1])
    assert flat.weights.dtype == torch.float32 and flat.half_precision == torch.float16
    w = flat.weights + 1e-4 * torch.randn_like(flat.weights)
    assert torch.equal(flat.stored(w), w.half().float()) and not torch.equal(flat.stored(w), w)
    with pytest.raises(LesionError, match="half-precision"):
        from lesion.crash.structure import mlp_structure

        mlp_structure(view)


def test_recover_out_writes_the_users_module_in_its_own_precision(tmp_path):
    """A float16 model read through lesion's casting view: the repaired model `recover --out` writes is the
    user's class, float16, without the view's forward, and it scores what recover reported."""
    import json

    from lesion.cli import main

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).half().eval()
    torch.save(model, tmp_path / "m16.pt")
    assert main(["--quiet", "recover", "--model", str(tmp_path / "m16.pt"), "--data", "digits", "--delete",
                 "units:1:frac=0.5", "--method", "compensate", "--out", str(tmp_path / "r.pt"), "--json",
                 str(tmp_path / "r.json")]) == 0
    repaired = torch.load(tmp_path / "r.pt", weights_only=False)
    assert type(repaired) is nn.Sequential and "forward" not in vars(repaired)
    assert {p.dtype for p in repaired.parameters()} == {torch.float16}
    reported = json.loads((tmp_path / "r.json").read_text())
    assert main(["--quiet", "evaluate", "--model", str(tmp_path / "r.pt"), "--data", "digits", "--json",
                 str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    # scored with float16-rounded weights in float32, evaluated in float16: one test digit at most apart
    assert evaluated["evaluation"]["accuracy"] == pytest.approx(reported["methods"]["compensate"]["accuracy"],
                                                                abs=1 / 360)


class _Keyed(nn.Module):
    """Returns {"logits": ...} or a tuple (aux, logits): an output that needs --output-key."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.fc, self.as_tuple = nn.Linear(784, 10), as_tuple

    def forward(self, x: torch.Tensor):
        out = self.fc(x.flatten(1))
        return (out.sum(1), out) if self.as_tuple else {"logits": out}


def test_loading_refuses_in_one_line_what_it_got_wrong(tmp_path, mlp):
    """Found by a review helper: --weights beside a preset was ignored (an untrained network scored); corrupt
    checkpoint fields raised KeyError/TypeError; a state dict that does not fit named no key; an exported
    program saved in training mode was evaluated with dropout on."""
    torch.save(mlp.state_dict(), tmp_path / "w.pt")
    with pytest.raises(LesionError, match="preset is an untrained reference network"):
        load_model("preset:mlp:8", str(tmp_path / "w.pt"))

    model, config = build_net("mlp:8", (1, 28, 28), 10)
    path = save_checkpoint(tmp_path / "c.pt", model, "mlp:8", config)
    payload = torch.load(path, weights_only=False)
    for broken in ({k: v for k, v in payload.items() if k != "config"}, {**payload, "config": None},
                   {**payload, "format_version": "1"}):
        torch.save(broken, tmp_path / "broken.pt")
        with pytest.raises(LesionError, match="checkpoint is corrupt"):
            load_model(str(tmp_path / "broken.pt"))

    torch.save({"linear.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    from lesion.nets.loading import _load_state

    with pytest.raises(LesionError, match=r'Missing key\(s\) in state_dict: "0.weight"|Missing key'):
        _load_state(nn.Sequential(nn.Linear(3, 3)), torch.load(tmp_path / "bad.pt"), "bad.pt")
    with pytest.raises(LesionError, match='Unexpected key.*"linear.weight"'):
        _load_state(nn.Sequential(nn.Linear(3, 3)), torch.load(tmp_path / "bad.pt"), "bad.pt")

    dropping = nn.Sequential(nn.Dropout(0.5), nn.Flatten(), nn.Linear(784, 10)).train()
    torch.export.save(torch.export.export(dropping, (X,)), tmp_path / "train.pt2")
    with pytest.raises(LesionError, match="exported in training mode.*dropout"):
        load_model(str(tmp_path / "train.pt2"))
    torch.export.save(torch.export.export(dropping.eval(), (X,)), tmp_path / "eval.pt2")
    assert load_model(str(tmp_path / "eval.pt2")).kind == "exported-program"


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(x.flatten(1))
        return out.sum(1), out


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_output_key_on_a_model_of_another_precision_and_on_torchscript(dtype):
    """--output-key on a float64 or bfloat16 model fed float32 data was refused (the key's view dropped the input
    cast); TorchScript with a key runs where its output is a tensor, and says what to do where it is not."""
    from lesion.nets.validate import prepare_model

    torch.manual_seed(0)
    for as_tuple, key in ((False, "logits"), (True, "1")):
        model = _Keyed(as_tuple).to(dtype).eval()
        view, m = prepare_model(model, X, output_key=key)
        assert m == 10
        expected = model.fc(X.flatten(1).to(dtype))
        torch.testing.assert_close(view(X), expected)
    scripted = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval())
    assert prepare_model(scripted, X, output_key="0")[1] == 10
    with pytest.raises(LesionError, match="TorchScript model must return.*returns tuple"):
        prepare_model(torch.jit.script(_Pair().eval()), X, output_key="1")


def test_a_module_pickled_from_a_script_says_how_to_load_it(tmp_path):
    # a class defined in the saving script lives in its __main__: PYTHONPATH cannot bring it back, a factory can
    import subprocess
    import sys

    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent(f"""
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(x)

        torch.save(Net(), {str(tmp_path / "net.pt")!r})
    """))
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
    with pytest.raises(LesionError, match="defined in the script that saved it .* --model module:factory"):
        load_model(str(tmp_path / "net.pt"))
