"""Reproduction of [G] Fig. 3 (issue "Global damage and break-down", item 6).

3A: mlp1-400 trained on mnist5k, accuracy against the fraction of hidden units deleted (random, magnitude and
metric orders); 3B analogue: the small CNN on fashion-mnist, per layer (random orders); 3D: covariant
acceleration along progressive deletion paths of mlp2 (LeNet-300-100) with the predicted break-down point
beside the measured one; 3F: several deletion paths between the same endpoints embedded by Isomap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lesion.data import load
from lesion.geometry.breakdown import deletion_curve, path_embedding, progressive_path, unit_order
from lesion.geometry.breakdown_predict import predict_breakdown
from lesion.nets import build_net
from lesion.report.jsonio import provenance, write_json
from lesion.report.plots import breakdown_plot
from lesion.train import TrainSettings, train

ACCELERATION_NOTE = (
    "The covariant acceleration at path time t is that of deleting the next unit: the metric's curvature of one "
    "more unit's removal, at the network damaged so far. It does not grow as damage accumulates — each unit's "
    "removal is about as curved as the last (3e4–1.3e5 from 0% to 100% on mlp2 and mlp1-400) — while accuracy "
    "breaks down from the accumulated change of the outputs against the margins of the inputs. The label-free "
    "predictors (issue 20) measure that instead: the margins' first-order sensitivity to the remaining units, "
    "calibrated by label-free estimates of accuracy at the predicted points.")


def _trained(net: str, data_name: str, epochs: int, keep: int | None = None, seed: int = 0):  # noqa: ANN202
    data = load(data_name)
    model, _ = build_net(net, data.input_shape, 10, seed=seed, dropout=0.2 if net.startswith("mlp") else 0.0)
    x, y = (data.x_train, data.y_train) if keep is None else (data.x_train[:keep], data.y_train[:keep])
    train(model, x, y, TrainSettings(epochs=epochs, seed=seed))
    return model.eval(), data


def figure3(out: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """All panels; JSON and PNGs into `out`."""
    import matplotlib.pyplot as plt

    from lesion.report.plots import save

    points = 11 if quick else 21
    fractions = tuple(float(f) for f in np.round(np.linspace(0, 1, points), 6))
    result: dict[str, Any] = {"figure": "g-fig3", "provenance": provenance(seed=seed)}

    mlp1, mnist = _trained("mlp1-400", "mnist5k", 5 if quick else 20, seed=seed)
    curves = [deletion_curve(mlp1, mnist.x_test, mnist.y_test, "1", fractions, order, 3 if quick else 5, 0.9, seed,
                             mnist.x_train[:200]) for order in ("random", "magnitude", "metric")]
    sequence = unit_order(mlp1, "1", "random", np.random.default_rng(seed + 1000))
    profile = progressive_path(mlp1, "1", sequence, mnist.x_train[:100], mnist.x_test, mnist.y_test, fractions)
    breakdown_plot(out / "g-fig3a.png", curves, [profile], "[G] Fig. 3A: mlp1-400 on mnist5k",
                   "accuracy on the 1,000 mnist5k test digits; band: 95% CI over random orders; dotted: measured "
                   "break-down (accuracy below 90% of clean); dashed: predicted")
    result["3A"] = {"curves": [c.to_dict() for c in curves], "path": profile.to_dict(),
                    "paper": "MLP-1 keeps accuracy within ~10% up to ~80% deleted, breaks down past ~90%"}

    cnn, fashion = _trained("cnn", "fashion-mnist", 1 if quick else 2, 3000 if quick else 20000, seed)
    x_ev, y_ev = fashion.x_test[:1000], fashion.y_test[:1000]
    layers = ["features.act1", "features.act2", "features.act3", "features.act4", "classifier.act1"]
    cnn_curves = [deletion_curve(cnn, x_ev, y_ev, layer, fractions, "random", 2 if quick else 3, 0.9, seed)
                  for layer in layers]
    breakdown_plot(out / "g-fig3b.png", cnn_curves, [], "[G] Fig. 3B analogue: small CNN on fashion-mnist, per layer",
                   "accuracy on 1,000 fashion-mnist test images; random orders; VGG-11/CIFAR-10 is not available here")
    result["3B"] = {"curves": [c.to_dict() for c in cnn_curves],
                    "paper": "VGG-11 tolerates ~60% node deletion in any layer"}

    mlp2, _ = _trained("mlp2", "mnist5k", 5 if quick else 20, seed=seed)
    profiles = [progressive_path(mlp2, "1", unit_order(mlp2, "1", "random", np.random.default_rng(seed + p)),
                                 mnist.x_train[:100], mnist.x_test, mnist.y_test, fractions, order_seed=seed + p)
                for p in range(2 if quick else 3)]
    curve2 = deletion_curve(mlp2, mnist.x_test, mnist.y_test, "1", fractions, "random", 3, 0.9, seed)
    predictions = [predict_breakdown(mlp2, mnist.x_train[:1000], "1", method, seed=seed)
                   for method in ("margin-calibrated", "probe")]
    breakdown_plot(out / "g-fig3d.png", [curve2], profiles, "[G] Fig. 3D: acceleration along deletion paths, mlp2",
                   "first hidden layer (300 units) of LeNet-300-100 on mnist5k; geometry on 100 training inputs; "
                   "solid: label-free predictions from 1,000 unlabelled training inputs", predictions)
    result["3D"] = {"curve": curve2.to_dict(), "paths": [p.to_dict() for p in profiles],
                    "predictions": [p.to_dict() for p in predictions],
                    "paper": "a steep increase of the covariant derivative along the path marks the break-down",
                    "why_the_acceleration_does_not_predict": ACCELERATION_NOTE}

    sequences = [unit_order(mlp2, "1", "random", np.random.default_rng(seed + 50 + p)) for p in range(4)]
    embedding = path_embedding(mlp2, "1", sequences, mnist.x_test[:300], mnist.y_test[:300],
                               points=6 if quick else 10)
    fig, ax = plt.subplots(figsize=(6, 4.6))
    paths = np.asarray(embedding["path"])
    for p in range(len(sequences)):
        sel = paths == p
        ax.plot(np.asarray(embedding["x"])[sel], np.asarray(embedding["y"])[sel], "-", color="0.7", linewidth=1)
    sc = ax.scatter(embedding["x"], embedding["y"], c=embedding["accuracy"], cmap="viridis", s=30)
    fig.colorbar(sc, ax=ax, label="test accuracy")
    ax.set_title("[G] Fig. 3F: deletion paths from N1 (trained) to N2 (90% deleted), Isomap", fontsize=9)
    save(fig, out / "g-fig3f.png", "mlp2 on mnist5k; networks embedded by their outputs on 300 test digits")
    result["3F"] = embedding
    write_json(out / "g-fig3.json", result)
    return result


FIGURES = {"g-fig3": lambda out, quick: figure3(out, quick)}
