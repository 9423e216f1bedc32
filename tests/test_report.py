"""`lesion report` on a user's own model (factory + weights) with npz data; resume; headless Chromium (slow)."""

import json
import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest
import torch

from lesion.cli import main
from lesion.data import load

SECTIONS = ("network", "crash", "geometry", "breakdown", "recovery", "bitflips")


@pytest.fixture(scope="module")
def user_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    pkg = root / "usermodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def small():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    """))
    import sys

    sys.path.insert(0, str(root))
    from usermodels.nets import small

    from lesion.train import TrainSettings, train

    data = load("digits")
    model = small()
    train(model, data.x_train, data.y_train, TrainSettings(epochs=10, seed=0))
    torch.save(model.state_dict(), root / "w.pt")
    np.savez(root / "d.npz", x=data.x_train.numpy(), y=data.y_train.numpy(), x_test=data.x_test.numpy(),
             y_test=data.y_test.numpy())
    out = root / "report"
    argv = ["report", "--model", "usermodels.nets:small", "--weights", str(root / "w.pt"), "--data",
            f"npz:{root / 'd.npz'}", "--quick", "--out", str(out)]
    assert main(argv) == 0
    yield out, argv
    sys.path.remove(str(root))


def test_report_on_a_user_model_with_npz_data(user_report):
    out, _ = user_report
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"<section id='{section}'>" in page
    images = re.findall(r"<img src='data:image/png;base64,", page)
    assert len(images) >= 6  # crash, spectrum, attack, breakdown, recovery, bit flips — all embedded
    results = json.loads((out / "results.json").read_text())
    assert set(SECTIONS) <= results.keys()
    assert results["network"]["clean"]["n"] == 360
    assert results["crash"]["rows"][0]["exact"] is True
    assert results["bitflips"]["rates"][0]["n"] == 20


def test_report_resumes_from_finished_stages(user_report, capsys):
    out, argv = user_report
    stamp = (out / "stages" / "crash.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert "finished earlier, reused" in capsys.readouterr().out
    assert (out / "stages" / "crash.json").stat().st_mtime_ns == stamp


def test_report_refuses_data_without_model(tmp_path, capsys):
    assert main(["report", "--data", "digits", "--out", str(tmp_path)]) == 2
    assert main(["report", "--model", "preset:mlp2", "--out", str(tmp_path)]) == 2
    for stages, said in (("", "has an empty name"), ("network,,crash", "has an empty name"), ("nope", "unknown stage")):
        assert main(["report", "--model", "preset:mlp:8", "--data", "digits", "--out", str(tmp_path), "--stages",
                     stages]) == 2  # an empty list ran every stage
        assert said in capsys.readouterr().err


def _chromium(browser, profile, url, *args):
    """Run headless Chromium on a page; return its stderr, where `--enable-logging` writes the page's console."""
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    done = subprocess.run([*flags, *args, url], check=True, timeout=120, capture_output=True, text=True)
    return done.stdout, done.stderr


def _ink_rows(png):
    """Which pixel rows of a screenshot carry ink (any pixel darker than light grey)."""
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("L"))
    return (grey < 200).any(axis=1)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(user_report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test-all installs it)")
    out, _ = user_report
    page = out / "report.html"
    url = page.resolve().as_uri()
    shot = tmp_path / "report.png"
    _, log = _chromium(browser, tmp_path / "p1", url, "--window-size=1200,3000", f"--screenshot={shot}")
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == []  # no script error, no warning, nothing written to the page's console
    dom, log = _chromium(browser, tmp_path / "p2", url, "--dump-dom")
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom
    assert dom.count("<img ") >= 6 and "data:image/png;base64," in dom
    assert dom.index('<section id="summary">') < dom.index('<section id="network">')  # the answer first

    # The screenshot shows the summary at the top: the same page with the summary hidden differs there, and
    # the rows it fills are a table's worth of ink near the top of the page.
    hidden = tmp_path / "hidden.html"
    hidden.write_text(page.read_text().replace("</head>", "<style>#summary{visibility:hidden}</style></head>", 1))
    shot_hidden = tmp_path / "hidden.png"
    _chromium(browser, tmp_path / "p3", hidden.resolve().as_uri(), "--window-size=1200,3000",
              f"--screenshot={shot_hidden}")
    summary_rows = np.flatnonzero(_ink_rows(shot) & ~_ink_rows(shot_hidden))
    assert summary_rows.size > 150  # the scorecard's rows of text, not a stray line
    assert summary_rows[0] < 600  # it starts within the first screen

    phone = tmp_path / "phone.png"  # a phone-sized screenshot renders too (the summary table scrolls)
    _, log = _chromium(browser, tmp_path / "p4", url, "--window-size=390,2000", f"--screenshot={phone}")
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []
    assert _ink_rows(phone)[:600].sum() > 100


def test_report_records_each_stage_estimate(user_report):
    out, _ = user_report
    results = json.loads((out / "results.json").read_text())
    for section in SECTIONS:
        plan = results[section]["plan"]
        assert plan["estimate_seconds"] >= 0 and plan["sized_down"] is None  # the default limit fits this model
    assert results["geometry"]["plan"]["sizes"] == {"inputs": 100}
    assert results["geometry"]["spectrum"]["inputs"] == 100


def _fake_estimators(monkeypatch, table):
    from lesion.report import costs

    fakes = {name: (lambda ctx, probe, opts=opts: [costs.StageOption({"size": i}, s) for i, s in enumerate(opts)])
             for name, opts in table.items()}
    monkeypatch.setattr(costs, "ESTIMATORS", fakes)
    return costs


def test_plan_shrinks_the_largest_stage_first_then_leaves_stages_out_and_refuses_what_cannot_fit(monkeypatch):
    costs = _fake_estimators(monkeypatch, {"network": [5.0], "a": [100.0, 40.0, 10.0], "b": [30.0, 20.0]})
    stages = ("network", "a", "b")

    def sizes(limit):
        return {n: o.sizes.get("size", "skip") for n, o in costs.plan_report(None, stages, limit).chosen.items()}

    assert sizes(None) == sizes(135.0) == {"network": 0, "a": 0, "b": 0}
    plan = costs.plan_report(None, stages, 80.0)  # 135 → a, the largest, shrinks to 40: 75
    assert {n: o.sizes["size"] for n, o in plan.chosen.items()} == {"network": 0, "a": 1, "b": 0}
    assert plan.seconds == 75.0 and set(plan.downsized) == {"a"}
    assert sizes(35.0) == {"network": 0, "a": 2, "b": 1}  # a → 10 (45), then b → 20: 35
    assert sizes(30.0) == {"network": 0, "a": 2, "b": "skip"}  # then b, the largest, is left out: 15
    plan = costs.plan_report(None, stages, 30.0)
    assert plan.chosen["b"].seconds == 0 and "left out to fit --time-limit (it would take about 30 s" in \
        plan.chosen["b"].note
    with pytest.raises(costs.LesionError, match="no analysis stage fits --time-limit 5 even at its smallest size "
                                               r"\(a 10 s, b 20 s\)"):
        costs.plan_report(None, stages, 5.0)  # every analysis left out: refused (README), not a report of nothing
    refusal = r"at least about 5 s \(network 5 s, a 0 s, b 0 s\), above --time-limit 4"
    with pytest.raises(costs.LesionError, match=refusal):
        costs.plan_report(None, stages, 4.0)


def test_report_above_the_time_limit_is_refused_before_any_stage(user_report, tmp_path, capsys):
    _, argv = user_report
    out = tmp_path / "refused"
    argv = [a if a != str(user_report[0]) else str(out) for a in argv] + ["--time-limit", "1e-6"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "above --time-limit 1e-06" in err[0] and "network" in err[0]
    assert not (out / "stages").exists() and not (out / "report.html").exists()


def test_a_downsized_stage_runs_at_its_chosen_size(user_report):
    from lesion.nets import load_model
    from lesion.report.builder import ReportContext, stage_bitflips, stage_geometry

    out, argv = user_report
    loaded = load_model(argv[argv.index("--model") + 1], argv[argv.index("--weights") + 1])
    ctx = ReportContext(loaded.module, loaded.to_dict(), load(argv[argv.index("--data") + 1]), out / "x", True,
                        sizes={"geometry": {"inputs": 12}, "bitflips": {"samples": 3, "weights": 2}})
    ctx.out.mkdir()
    assert stage_geometry(ctx)["spectrum"]["inputs"] == 12
    flips = stage_bitflips(ctx)
    assert flips["rates"][0]["n"] == 3 and flips["candidates"] == 2 * 5


def test_summary_comes_first_and_equals_the_sections(user_report):
    """The scorecard's numbers are the sections' numbers (read independently here from results.json)."""
    out, _ = user_report
    page = (out / "report.html").read_text()
    assert page.index("<section id='summary'>") < page.index("<section id='network'>")
    assert "href='#breakdown'" in page and "name='viewport'" in page
    results = json.loads((out / "results.json").read_text())
    card = {e["key"]: e for e in results["scorecard"]}
    clean = results["network"]["clean"]
    assert card["clean_accuracy"]["value"] == clean["accuracy"]
    assert card["clean_accuracy"]["interval"] == clean["accuracy_ci"]
    for curve in results["breakdown"]["curves"]:  # the crossing of 90% of clean, interpolated by hand
        level = 0.9 * curve["clean_accuracy"]
        fr, acc = curve["fractions"], curve["accuracy"]
        i = next(i for i in range(1, len(fr)) if acc[i] < level)
        expected = fr[i - 1] + (acc[i - 1] - level) / (acc[i - 1] - acc[i]) * (fr[i] - fr[i - 1])
        assert card[f"tolerated_deletion:{curve['layer']}"]["value"] == pytest.approx(expected)
    methods = results["recovery"]["methods"]
    assert card["best_recovery"]["value"] == max(methods, key=lambda m: methods[m]["accuracy"])
    worst_bit = min(results["bitflips"]["single_bits"], key=lambda b: b["accuracy"])
    assert card["most_damaging_bit"]["value"] == worst_bit["accuracy"]
    certified = results["crash"]["certified"][0]
    assert card["certified_crashes:1"]["value"] == certified["certified"]
    halving = results["geometry"]["attack"]["halving"]  # ‖du‖ that halves accuracy, random against adversarial
    random = sorted(r["norm"] for r in halving["random"])
    assert card["halving_norm"]["value"] == [float(np.median(random)), halving["adversarial"]["norm"]]
    # the range of a few random directions is given in the text, not as a (95%) interval
    assert card["halving_norm"]["interval"] is None
    assert f"range {random[0]:.3g}–{random[-1]:.3g}" in card["halving_norm"]["text"]
    assert all(up >= lo for lo, up in zip(certified["omega_max_lower"], certified["omega_max_upper"], strict=True))
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Summary") < markdown.index("## 1. Network and data")
    assert "| clean test accuracy |" in markdown


def test_the_network_section_gives_the_clean_accuracy_the_later_sections_start_from(tmp_path):
    # --quick measures sections 3-6 on the first 500 of mnist5k's 1,000 test inputs: two clean accuracies, each said
    from lesion.nets import build_net
    from lesion.report.builder import ReportContext, stage_network
    from lesion.report.sections import build_sections
    from lesion.train import evaluate

    data = load("mnist5k")
    model, _ = build_net("mlp:16", data.input_shape, 10, seed=0)
    model.eval()
    ctx = ReportContext(model, {"name": "mlp:16"}, data, tmp_path, True)
    network = stage_network(ctx)
    assert network["evaluation"]["inputs"] == 500
    assert network["evaluation"]["accuracy"] == evaluate(model, data.x_test[:500], data.y_test[:500]).accuracy
    text = " ".join(build_sections({"network": network}, tmp_path)[0].paragraphs)
    assert f"first 500 test inputs (as sized for this report), where the clean accuracy is " \
           f"{network['evaluation']['accuracy']:.4f}" in text
    full = ReportContext(model, {"name": "mlp:16"}, data, tmp_path, False)
    assert "evaluation" not in stage_network(full)  # 2,000 asked, all 1,000 used: one clean accuracy


def test_saved_stages_are_reused_only_for_the_same_model_outputs_and_data(tmp_path, capsys):
    """Found by a review helper: stages were keyed by the data's name and the weights' digest, so a data file
    rewritten in place, or the same weights behind another activation, reused stale stages (clean accuracy
    0.808 reported for data whose fresh figure was 0.017); a damaged stage file raised a traceback."""
    from lesion.nets import build_net, save_checkpoint

    data = load("digits")
    model, config = build_net("mlp:16", data.input_shape, 10, seed=0)
    checkpoint = save_checkpoint(tmp_path / "m.pt", model.eval(), "mlp:16", config)
    np.savez(tmp_path / "d.npz", x=data.x_train.numpy(), y=data.y_train.numpy(), x_test=data.x_test.numpy(),
             y_test=data.y_test.numpy())
    out = tmp_path / "report"
    argv = ["--quiet", "report", "--model", str(checkpoint), "--data", f"npz:{tmp_path / 'd.npz'}", "--quick",
            "--stages", "network", "--out", str(out)]

    def clean_accuracy() -> float:
        return json.loads((out / "results.json").read_text())["network"]["clean"]["accuracy"]

    assert main(argv) == 0
    first = clean_accuracy()
    assert main(argv) == 0 and "finished earlier, reused" in capsys.readouterr().out
    np.savez(tmp_path / "d.npz", x=data.x_train.numpy(), y=data.y_train.numpy(), x_test=data.x_test.numpy(),
             y_test=((data.y_test + 1) % 10).numpy())  # the same file name, other labels
    assert main(argv) == 0
    assert "finished earlier, reused" not in capsys.readouterr().out and clean_accuracy() != first
    (out / "stages" / "network.json").write_text('{"key": ')  # cut short
    assert main(argv) == 0 and "finished earlier, reused" not in capsys.readouterr().out
    model.act1 = torch.nn.Tanh()  # the same weights, another activation
    torch.save(model, tmp_path / "m.pt")
    assert main(argv) == 0 and "finished earlier, reused" not in capsys.readouterr().out


def test_sections_say_what_their_numbers_are(user_report):
    """Found by a review helper, on the report's own results: a tolerated crash count equal to the largest f
    measured is a lower bound ("≥"); the share of lost accuracy a repair gets back is computed on the inputs the
    repairs are scored on; an estimated trace carries its interval; ρ above the float32 floor says so; a left-out
    geometry stage and a missing deletion path say why; a token model's metric counts sequences, not rows."""
    import copy

    from lesion.report.scorecard import build_scorecard
    from lesion.report.sections import build_sections

    out, _ = user_report
    results = copy.deepcopy(json.loads((out / "results.json").read_text()))
    results.pop("scorecard", None)

    def text(changed):
        return "\n".join(p for s in build_sections(changed, out) for p in s.paragraphs) + "\n" + "\n".join(
            " | ".join(map(str, row)) for s in build_sections(changed, out) for _, rows in s.tables for row in rows)

    tolerance = results["crash"]["tolerance"][0]
    tolerance.update(erf=tolerance["measured_up_to"], erf_av=0)
    assert f"≥ {tolerance['measured_up_to']}" in text(results)
    certified = results["crash"]["certified"][0]
    certified["certified"] = max(certified["faults"])
    card = {e["key"]: e for e in build_scorecard(results)}
    assert card["certified_crashes:1"]["text"].startswith(f"≥ {max(certified['faults'])} ")

    net, methods = results["network"], results["recovery"]["methods"]
    net["evaluation"] = {"inputs": 100, "accuracy": net["clean"]["accuracy"] + 0.01}
    best = max(m["accuracy"] for m in methods.values())
    share = (best - methods["naive"]["accuracy"]) / (net["evaluation"]["accuracy"] - methods["naive"]["accuracy"])
    assert build_scorecard(results)[-1]["regained"] == pytest.approx(share)

    spec = results["geometry"]["spectrum"]
    spec.update(trace_ci=[1.0, 2.0], trace_method="hutchinson, 100 Rademacher vectors", resolution_floor=0.5)
    page = text(results)
    assert "trace ≈" in page and "hutchinson, 100 Rademacher vectors; 95% CI 1.0000–2.0000" in page
    assert "counting eigenvalues above 0.5" in page and f"ρ({spec['threshold']:g}) =" not in page
    results["geometry"]["attack"]["analysis_inputs"] = spec["inputs"] // 64
    assert f"{spec['inputs'] // 64} sequences ({spec['inputs']:,} token rows)" in text(results)
    results["breakdown"]["path"] = {"skipped": "no layer reads the units", "predicted_breakdown": None}
    assert "No deletion path, so no break-down predicted from its covariant acceleration: no layer reads" in \
        text(results)
    results["geometry"] = {"skipped": "the model has no float parameters"}
    assert "Not computed: the model has no float parameters." in text(results)


def test_an_interrupted_report_resumes_at_its_planned_sizes_and_leaves_no_plot_of_the_interrupted_stage(
        monkeypatch, tmp_path):
    from lesion.report import builder

    costs = _fake_estimators(monkeypatch, {"network": [1.0], "a": [100.0, 40.0, 10.0], "b": [30.0, 20.0]})
    ran = {}

    def runner(name, interrupt=False):
        def run(ctx):
            ran[name] = ctx.chosen(name, "size", None)
            (ctx.out / f"{name}.png").write_bytes(b"plot of " + name.encode())
            if interrupt:
                raise KeyboardInterrupt
            return {"size": ran[name]}
        return run

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ctx = builder.ReportContext(model, {"digest": "d"}, load("digits"), tmp_path / "r", True)
    ctx.out.mkdir()
    (ctx.out / "mine.png").write_bytes(b"the user's own picture")
    monkeypatch.setattr(builder, "RUNNERS", {"network": runner("network"), "a": runner("a"),
                                             "b": runner("b", interrupt=True)})
    with pytest.raises(KeyboardInterrupt):
        builder.run_report(ctx, ("network", "a", "b"), log=lambda s: None, time_limit=80.0)
    assert ran == {"network": 0, "a": 1, "b": 0}  # a shrank to fit 80 s
    assert not (ctx.out / "b.png").exists()  # the interrupted stage's plot is gone, the others stay
    assert (ctx.out / "a.png").exists() and (ctx.out / "mine.png").read_bytes() == b"the user's own picture"

    # The estimates of a new process differ (timings move): planned again, b alone would now fit at size 0 with
    # a large margin; resumed, it keeps the size the uninterrupted run gave it.
    _fake_estimators(monkeypatch, {"network": [1.0], "a": [100.0, 40.0, 10.0], "b": [70.0, 20.0]})
    assert {n: o.sizes.get("size") for n, o in costs.plan_report(None, ("b",), 80.0).chosen.items()} == {"b": 0}
    monkeypatch.setattr(builder, "RUNNERS", {"network": runner("network"), "a": runner("a"), "b": runner("b")})
    ctx.sizes = {}
    ran.clear()
    monkeypatch.setattr("lesion.report.html.render", lambda *a: "")
    monkeypatch.setattr("lesion.report.markdown.render_markdown", lambda *a: "")
    monkeypatch.setattr("lesion.report.scorecard.build_scorecard", lambda results: {})
    monkeypatch.setattr("lesion.report.sections.build_sections", lambda results, out: [])
    monkeypatch.setattr("lesion.report.sections.summary_section", lambda card: None)
    builder.run_report(ctx, ("network", "a", "b"), log=lambda s: None, time_limit=80.0)
    assert ran == {"b": 0}
    saved = json.loads((ctx.out / "stages" / "b.json").read_text())["result"]
    assert saved["size"] == 0 and saved["plan"]["estimate_seconds"] == 30.0  # the first plan's, not 70

    ran.clear()  # another limit plans anew
    for name in ("a", "b"):
        (ctx.out / "stages" / f"{name}.json").unlink()
    builder.run_report(ctx, ("network", "a", "b"), log=lambda s: None, time_limit=60.0)
    assert ran == {"a": 1, "b": 1}  # 170 s: a to 40, then b to 20
