"""The `lesion` command: help texts, train → evaluate → JSON, and exit code 2 without traceback on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lesion.cli import build_parser, main
from lesion.nets import build_net, save_checkpoint


def subcommands(parser=None, prefix="lesion"):
    """Every (name, parser) of the command tree, nested sub-commands included."""
    parser = parser or build_parser()
    found = [(prefix, parser)]
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                found += subcommands(sub, f"{prefix} {name}")
    return found


def test_every_option_of_every_command_is_documented():
    tree = subcommands()
    expected = {"lesion crash omega", "lesion crash bound", "lesion crash tolerance", "lesion campaign"}
    assert expected <= dict(tree).keys()
    for name, sub in tree:
        for action in sub._actions:
            assert action.help, f"{name}: option {action.option_strings or action.dest} has no help"
        assert sub.format_help()


@pytest.fixture
def checkpoint(tmp_path):
    model, config = build_net("mlp:16", (1, 8, 8), 10, seed=0)
    return save_checkpoint(tmp_path / "m.pt", model, "mlp:16", config, seed=0)


def test_train_then_evaluate_writes_json(tmp_path, capsys):
    out, report = tmp_path / "m.pt", tmp_path / "train.json"
    assert main(["train", "--net", "mlp:32", "--data", "digits", "--epochs", "10", "--seed", "1",
                 "--dropout", "0.1", "--out", str(out), "--json", str(report)]) == 0
    trained = json.loads(report.read_text())
    assert trained["seed"] == 1 and trained["data"]["name"] == "digits"
    assert trained["provenance"]["command"] == "train"
    accuracy = trained["metrics"]["test_accuracy"]
    assert accuracy > 0.8
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(out), "--data", "digits", "--json", str(result)]) == 0
    evaluation = json.loads(result.read_text())
    assert evaluation["evaluation"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert evaluation["evaluation"]["n"] == 360
    assert evaluation["model"]["metadata"]["training"]["settings"]["epochs"] == 10
    assert "test accuracy" in capsys.readouterr().out


def assert_user_error(argv, capsys, fragment):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lesion: error: ") and fragment in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, checkpoint):
    assert_user_error(["evaluate", "--model", str(tmp_path / "missing.pt"), "--data", "digits"], capsys,
                      "not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model at all")
    assert_user_error(["evaluate", "--model", str(corrupt), "--data", "digits"], capsys, "cannot read")
    assert_user_error(["evaluate", "--model", str(checkpoint), "--data", "mnist5k"], capsys,
                      "does not run on inputs of shape (1, 28, 28)")
    assert_user_error(["evaluate", "--model", str(checkpoint), "--data", "no-such-data"], capsys,
                      "unknown data set")
    model, config = build_net("mlp:16", (1, 8, 8), 10)
    with torch.no_grad():
        model.fc1.weight[3, 3] = float("nan")
    nan_path = save_checkpoint(tmp_path / "nan.pt", model, "mlp:16", config)
    assert_user_error(["evaluate", "--model", str(nan_path), "--data", "digits"], capsys, "NaN/inf weights")
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 8, 8)), y=np.zeros(3))
    assert_user_error(["evaluate", "--model", str(checkpoint), "--data", f"npz:{tmp_path / 'bad.npz'}"], capsys,
                      "")
    assert_user_error(["train", "--net", "mlp9", "--data", "digits", "--out", str(tmp_path / "x.pt")], capsys,
                      "unknown network")
    assert main(["crash", "omega", "--model", str(checkpoint), "--data", "digits", "--checkpoint",
                 str(tmp_path / "progress.json")]) == 2
    assert "binary (a NumPy .npz archive), not json" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello\n")
    assert_user_error(["evaluate", "--model", str(tmp_path / "notes.txt"), "--data", "digits"], capsys,
                      "(it begins with b'hello\\n')")


def test_unlabelled_npz_cannot_be_evaluated(tmp_path, capsys, checkpoint):
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((6, 1, 8, 8)))
    assert_user_error(["evaluate", "--model", str(checkpoint), "--data", f"npz:{tmp_path / 'x.npz'}"], capsys,
                      "no test labels")


def test_installed_program_exit_code_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lesion.cli", "evaluate", "--model", str(tmp_path / "no.pt"),
                           "--data", "digits"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "not found" in done.stderr
    usage = subprocess.run([sys.executable, "-m", "lesion.cli", "train"], capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "--net" in usage.stderr


def test_demo_runs_end_to_end(tmp_path, capsys):
    report = tmp_path / "demo.json"
    assert main(["demo", "--net", "mlp:64", "--epochs", "2", "--sets", "2", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["clean_accuracy"] > 0.8
    points = result["points"]
    assert [p["crashed"] for p in points] == [6, 19, 32, 45, 58]
    # crashing 90% of the units hurts more than crashing 10%
    assert points[-1]["accuracy"] < points[0]["accuracy"]
    assert "crashed/units" in capsys.readouterr().out


def test_nets_lists_presets(capsys):
    assert main(["nets"]) == 0
    assert "266,610" in capsys.readouterr().out


def test_the_cli_starts_without_importing_torch_and_names_every_figure():
    """`lesion --help` and every sub-command's --help build without torch (issue 16: start-up), and the
    figure list that `reproduce --help` shows is the experiments' own."""
    import subprocess
    import sys

    code = ("import sys\nfrom lesion.cli import build_parser\nparser = build_parser()\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lesion'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    from lesion.cli.reproduce import FIGURE_NAMES, _figures

    assert sorted(FIGURE_NAMES) == sorted(_figures())


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    import subprocess
    import sys

    command = (f"{sys.executable} -m lesion.cli campaign --model preset:mlp2 --data mnist5k --damage crash:1:count=2 "
               "--samples 3 --json c.json | true; echo ${PIPESTATUS[0]}")  # a reader that never reads
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr and "error" not in done.stderr
    # the command ran to its end: the JSON is written, and the status says the reader went away
    assert done.stdout.strip() == "141"
    assert len(json.loads((tmp_path / "c.json").read_text())["campaign"]["samples"]) == 3
