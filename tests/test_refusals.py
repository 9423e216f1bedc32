"""Issue 14: every bad input is refused with one line and exit 2 before any work; intervals respect their
quantity; a fuzz test of the CLI (never a traceback)."""

import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from lesion.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.pt"
    assert main(["--quiet", "train", "--net", "mlp1-16", "--data", "digits", "--epochs", "2", "--out", str(path)]) == 0
    return str(path)


def refused(argv, capsys, needle):
    code = main(["--quiet", *argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("lesion"), captured.err
    assert needle in lines[0], lines[0]
    return captured


PARSE_TIME = [
    (["campaign", "--data", "digits", "--damage", "gauss:0.1", "--samples", "3", "--seed", "-1"], "--seed"),
    (["campaign", "--data", "digits", "--damage", "gauss:0.1", "--samples", "3", "--tolerance", "nan"],
     "--tolerance"),
    (["spectrum", "--data", "digits", "--tau", "-1"], "--tau"),
    (["breakdown", "--data", "digits", "--share", "5"], "--share"),
    (["breakdown", "--data", "digits", "--paths", "-3"], "--paths"),
    (["recover", "--data", "digits", "--delete", "units:1:frac=0.5", "--radius", "-1"], "--radius"),
    (["recover", "--data", "digits", "--delete", "units:1:frac=0.5", "--batch", "0"], "--batch"),
    (["crash", "omega", "--data", "digits", "--faults", "1", "--ci-width", "-1"], "--ci-width"),
    (["spectrum", "--data", "digits", "--plot", "/nonexistent/s.png"], "does not exist"),
    (["evaluate", "--data", "digits", "--json", "/proc/x.json"], "cannot write"),
    (["evaluate", "--data", "digits", "--save-outputs", "/nonexistent/o.npy"], "does not exist"),
    (["recover", "--data", "digits", "--delete", "units:1:frac=0.5", "--out", "/nonexistent/r.pt"],
     "does not exist"),
]


@pytest.mark.parametrize(("argv", "needle"), PARSE_TIME, ids=[" ".join(a[:1] + a[-2:]) for a, _ in PARSE_TIME])
def test_bad_options_are_refused_at_parse_time(ckpt, capsys, argv, needle):
    captured = refused([argv[0], *(["omega"] if argv[:2] == ["crash", "omega"] else []), "--model", ckpt,
                        *argv[2 if argv[0] == "crash" else 1:]], capsys, needle)
    assert captured.out == ""  # nothing was computed or printed first


def test_report_out_naming_an_existing_file(ckpt, capsys, tmp_path):
    existing = tmp_path / "file"
    existing.write_text("x")
    refused(["report", "--model", ckpt, "--data", "digits", "--out", str(existing)], capsys, "existing file")


def test_empty_and_non_finite_npz_data(ckpt, capsys, tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 64), dtype=np.float32))
    refused(["evaluate", "--model", ckpt, "--data", f"npz:{empty}"], capsys, "is empty")
    nan = tmp_path / "nan.npz"
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    x[2, 3] = np.nan
    np.savez(nan, x=x)
    refused(["evaluate", "--model", ckpt, "--data", f"npz:{nan}"], capsys, "NaN or infinite")


def test_model_failing_only_on_large_batches_is_refused_before_the_work(capsys, tmp_path):
    path = tmp_path / "big.pt"
    torch.save(zoo.FailsOnLargeBatches(), path)
    refused(["evaluate", "--model", str(path), "--data", "digits"], capsys, "does not run")


def test_nan_direction_is_refused_naming_the_values(ckpt, capsys, tmp_path):
    model = torch.load(ckpt, weights_only=True)
    n = sum(t.numel() for t in model["state_dict"].values())
    direction = np.ones(n)
    direction[[3, 7]] = np.nan
    np.save(tmp_path / "d.npy", direction)
    refused(["evaluate", "--model", ckpt, "--data", "digits", "--damage", f"direction:{tmp_path / 'd.npy'}"],
            capsys, "2 non-finite values")


def test_unbounded_recovery_budget_is_refused_with_its_estimate(ckpt, capsys):
    code = main(["--quiet", "recover", "--model", ckpt, "--data", "digits", "--delete", "units:1:frac=0.5",
                 "--budget", "1e12"])
    captured = capsys.readouterr()
    assert code == 2 and "above --time-limit" in captured.err
    assert "estimated time" in captured.out and "accuracy" not in captured.out.split("estimated")[1]


def test_intervals_respect_their_quantity(ckpt, tmp_path):
    assert main(["--quiet", "breakdown", "--model", ckpt, "--data", "digits", "--orders", "2", "--paths", "0",
                 "--inputs", "60", "--json", str(tmp_path / "b.json")]) == 0
    accuracy = json.loads((tmp_path / "b.json").read_text())["accuracy"]
    assert len(accuracy["per_order"]) == 2
    assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in accuracy["ci"])
    assert main(["--quiet", "campaign", "--model", ckpt, "--data", "digits", "--samples", "40", "--damage",
                 "bitflip:ber=2e-3", "--json", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())["campaign"]
    assert 0.0 <= result["accuracy"]["ci"][0] <= result["accuracy"]["ci"][1] <= 1.0
    e = result["output_error"]
    errors = [s["output_error"] for s in result["samples"]]
    # JSON writes inf/NaN as strings: exponent flips reach them
    assert e["non_finite"] == sum(isinstance(v, str) or not math.isfinite(v) for v in errors) > 0
    assert e["mean"] is not None and math.isfinite(e["mean"])
    assert 0.0 <= e["ci"][0] <= e["ci"][1] and 0.0 <= e["median_ci"][0] <= e["median"] <= e["median_ci"][1]


VALUES = st.sampled_from(["0", "1", "3", "-1", "0.5", "2", "nan", "inf", "1e12", "x", "", "/nonexistent/f"])
OPTIONS = {
    "evaluate": ["--damage", "--batch-size", "--output-key", "--seed"],
    "campaign": ["--damage", "--samples", "--ci-width", "--tolerance", "--inputs", "--seed"],
    "spectrum": ["--inputs", "--top", "--tau", "--method", "--seed"],
    "attack": ["--inputs", "--sigma", "--directions", "--top"],
    "breakdown": ["--layer", "--orders", "--paths", "--share", "--factor", "--inputs", "--points"],
    "sites": ["--seed"],
}
DAMAGES = st.sampled_from(["crash:1:frac=0.5", "crash:9:1", "head:1:0", "filter:1:0,1", "gauss:0.1", "gauss:-1",
                           "bitflip:ber=1e-3", "stuck:fc1.weight:0:inf", "delete:weights:frac=2", "melt:1"])
SAFE = {"--samples": "3", "--inputs": "8", "--directions": "3", "--top": "2", "--orders": "2", "--paths": "0"}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [command]
    for option in draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=3, unique=True)):
        value = draw(DAMAGES) if option == "--damage" else draw(VALUES)
        if option in SAFE and draw(st.booleans()):
            value = SAFE[option]  # keep the work small when the value is valid
        if option in ("--samples", "--inputs", "--directions", "--top", "--orders", "--points") and value in (
                "1e12", "inf"):
            value = SAFE.get(option, "3")
        argv += [option, value]
    if command in ("spectrum", "attack", "breakdown") and "--inputs" not in argv:
        argv += ["--inputs", "8"]
    if command == "attack" and "--directions" not in argv:
        argv += ["--directions", "3", "--top", "2", "--no-bitflips"]
    if command == "campaign" and "--samples" not in argv and "--ci-width" not in argv:
        argv += ["--samples", "3"]
    if command == "campaign" and "--damage" not in argv:
        argv += ["--damage", draw(DAMAGES)]
    if command == "breakdown" and "--paths" not in argv:
        argv += ["--paths", "0", "--orders", "2"]
    return argv


@settings(max_examples=int(os.environ.get("LESION_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=command_lines())
def test_cli_fuzz_never_a_traceback(ckpt, capsys, tmp_path, argv):
    out = tmp_path / "r.json"
    code = main(["--quiet", argv[0], "--model", ckpt, "--data", "digits", *argv[1:], "--json", str(out)])
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, captured.err)
    if code == 0:
        assert isinstance(json.loads(out.read_text()), dict)
    else:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("lesion"), (argv, captured.err)
    out.unlink(missing_ok=True)


def test_spectrum_prints_its_estimate_and_refuses_above_the_time_limit(ckpt, capsys):
    code = main(["--quiet", "spectrum", "--model", ckpt, "--data", "digits", "--inputs", "20", "--top", "3",
                 "--method", "lanczos", "--time-limit", "1e-9"])
    captured = capsys.readouterr()
    assert code == 2 and "above --time-limit" in captured.err
    assert "one g·v product" in captured.out and "top eigenvalues" not in captured.out


def test_breakdown_paths_print_their_estimate_and_refuse_above_the_time_limit(ckpt, capsys):
    code = main(["--quiet", "breakdown", "--model", ckpt, "--data", "digits", "--paths", "2", "--inputs", "10",
                 "--time-limit", "1e-9"])
    captured = capsys.readouterr()
    assert code == 2 and "above --time-limit" in captured.err and "estimated time of 2" in captured.out
    assert "break-down" not in captured.out
