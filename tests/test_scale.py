"""Campaigns in shards (issue 18): resuming from a checkpoint, and a Ray cluster giving the local numbers even
when a worker dies."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from lesion.cli import main
from lesion.damage import parse_damage
from lesion.damage.campaign import Campaign
from lesion.errors import LesionError
from lesion.scale.executor import LocalExecutor


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 30), torch.nn.ReLU(), torch.nn.Linear(30, 4)).eval()
    x = torch.randn(150, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


DAMAGE = ["bitflip:ber=1e-4", "crash:1:frac=0.2", "act-bitflip:1:ber=1e-4"]


def _figures(result) -> list[str]:
    """Every sample's figures and faults, as text (NaN equals NaN there, and floats keep every bit)."""
    return [json.dumps([s.index, s.seed, s.accuracy, s.loss, s.output_error, s.faults]) for s in result.samples]


def _campaign(model, x, y) -> Campaign:
    return Campaign(model, x, y, [parse_damage(d) for d in DAMAGE], seed=7)


def test_a_checkpoint_resumes_where_the_run_stopped(tmp_path):
    model, x, y = _model_and_data()
    whole = _campaign(model, x, y).run(samples=300)
    path = tmp_path / "shards.json"
    first = _campaign(model, x, y).run(samples=128, checkpoint=path)  # "interrupted" after two batches
    assert len(json.loads(path.read_text())["shards"]) == 2
    executor = LocalExecutor()
    resumed = _campaign(model, x, y).run(samples=300, checkpoint=path, executor=executor)
    assert executor.stats.resumed == 2 and executor.stats.shards == 3
    assert _figures(resumed) == _figures(whole) and _figures(first) == _figures(whole)[:128]
    assert resumed.extra["execution"]["resumed"] == 2
    other = Campaign(model, x, y, [parse_damage("bitflip:ber=1e-3")], seed=7)
    with pytest.raises(LesionError, match="another campaign"):
        other.run(samples=10, checkpoint=path)


def test_a_checkpoint_of_another_length_or_batch_reuses_only_the_samples_asked_for(tmp_path):
    model, x, y = _model_and_data()
    whole = _figures(_campaign(model, x, y).run(samples=100))
    path = tmp_path / "shards.json"
    _campaign(model, x, y).run(samples=10, checkpoint=path)  # a last shard of 10, not of a whole batch
    assert _figures(_campaign(model, x, y).run(samples=100, checkpoint=path)) == whole
    assert _figures(_campaign(model, x, y).run(samples=50, checkpoint=path)) == whole[:50]
    assert _figures(_campaign(model, x, y).run(samples=100, checkpoint=path, batch=32)) == whole


def test_ray_gives_the_local_numbers_even_when_a_worker_dies():
    pytest.importorskip("ray")
    from lesion.scale.ray_executor import RayExecutor

    model, x, y = _model_and_data()
    local = _campaign(model, x, y).run(samples=640)
    killed = []

    def kill_one(executor, shard):
        if not killed:
            pid = executor.pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    executor = RayExecutor(workers=2, on_result=kill_one)
    try:
        remote = _campaign(model, x, y).run(samples=640, executor=executor)
    finally:
        executor.close()
    assert killed and _figures(remote) == _figures(local)
    stats = remote.extra["execution"]
    assert stats["executor"] == "ray" and stats["workers"] == 2 and stats["retries"] >= 1
    assert stats["shards"] >= 10  # every shard once, the lost ones again


def test_executor_mistakes_are_one_line(tmp_path, capsys):
    assert main(["campaign", "--model", "preset:random-0", "--data", "grid:4:3", "--damage", "gauss:0.1",
                 "--samples", "3", "--executor", "spark"]) == 2
    assert "unknown executor 'spark'" in capsys.readouterr().err
    assert main(["campaign", "--model", "preset:random-0", "--data", "grid:4:3", "--damage", "gauss:0.1",
                 "--samples", "3", "--gpus-per-task", "1"]) == 2
    assert "--gpus-per-task goes with --executor ray" in capsys.readouterr().err


@pytest.mark.slow
def test_exact_and_monte_carlo_omega_on_ray_equal_the_local_figures_to_the_bit():
    pytest.importorskip("ray")
    from lesion.crash import CrashBudget, exact_omega, mlp_structure, monte_carlo_omega
    from lesion.scale.ray_executor import RayPool

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5)).eval()
    structure = mlp_structure(model)
    x = torch.randn(5000, 10, generator=torch.Generator().manual_seed(2))
    pool = RayPool(workers=2)
    try:
        # (3, additive, 300): steps over ranges of at most 300 of the 2,024 sets, by prefix (issue 18)
        for f, engine, set_batch in ((2, "additive", None), (3, "additive", None), (3, "additive", 300),
                                     (2, "general", None)):
            budget = CrashBudget((1,), (24,), f)
            local = exact_omega(structure, x, budget, engine=engine, time_limit=None, set_batch=set_batch)
            remote = exact_omega(structure, x, budget, engine=engine, time_limit=None, executor=pool,
                                 set_batch=set_batch)
            for key in ("omega_av", "omega_std", "omega_mav", "omega_max", "omega_worst_set", "worst_set"):
                assert getattr(remote, key) == getattr(local, key), (f, engine, set_batch, key)
        for samples, width in ((300, None), (None, 0.05)):  # Monte Carlo: the sets are drawn on the driver
            budget = CrashBudget((1,), (24,), 3)
            local = monte_carlo_omega(structure, x, budget, samples=samples, ci_width=width, seed=4)
            remote = monte_carlo_omega(structure, x, budget, samples=samples, ci_width=width, seed=4, executor=pool)
            for key in ("omega_av", "omega_std", "omega_mav", "omega_max", "omega_worst_set", "worst_set",
                        "samples", "omega_av_ci"):
                assert getattr(remote, key) == getattr(local, key), (samples, key)
    finally:
        pool.close()
    assert pool.stats.shards >= 9  # three 2,048-input steps a run


def _saved_digits_mlp(path, hidden: int) -> str:
    """A small untrained digits MLP saved whole (what a user passes as --model); Ray must be importable."""
    pytest.importorskip("ray")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    torch.save(model, path)
    return str(path)


@pytest.mark.slow
def test_report_campaigns_and_omega_on_ray_equal_the_local_report(tmp_path):
    """`lesion report --executor ray`: the bit-flip campaigns, the crash stage's Omega and the deletion curves
    run on the workers and give the local report's figures to the bit (issues 18 and 21)."""
    model = _saved_digits_mlp(tmp_path / "m.pt", 16)
    runs = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        argv = ["report", "--model", model, "--data", "digits", "--quick", "--stages",
                "crash,breakdown,bitflips", "--out", str(out), "--executor", executor, "--workers", "2"]
        if executor == "local":
            argv = argv[:-2]
        assert main(argv) == 0
        runs[executor] = json.loads((out / "results.json").read_text())
    local, remote = runs["local"], runs["ray"]
    assert remote["provenance"]["execution"]["executor"] == "ray" and remote["provenance"]["execution"]["shards"] > 0
    for stage, key in (("crash", "rows"), ("bitflips", "rates"), ("bitflips", "single_bits"),
                       ("breakdown", "curves")):
        assert json.dumps(remote[stage][key]) == json.dumps(local[stage][key]), (stage, key)


@pytest.mark.slow
def test_deletion_curves_on_ray_equal_the_local_ones(tmp_path):
    """`lesion breakdown --executor ray`: each random order's curve on a worker, the local curve to the bit."""
    model = _saved_digits_mlp(tmp_path / "m.pt", 20)
    out = {}
    for executor in ("local", "ray"):
        argv = ["breakdown", "--model", model, "--data", "digits", "--orders", "4", "--points", "6",
                "--paths", "0", "--json", str(tmp_path / f"{executor}.json"), "--executor", executor]
        assert main(argv) == 0
        out[executor] = json.loads((tmp_path / f"{executor}.json").read_text())
    assert out["ray"]["accuracy"] == out["local"]["accuracy"] and len(out["local"]["accuracy"]["per_order"]) == 4
    assert out["ray"]["execution"]["shards"] == 4 and "execution" not in out["local"]
