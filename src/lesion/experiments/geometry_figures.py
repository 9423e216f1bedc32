"""Reproductions of [G]'s figures on local vulnerability (issue "Metric tensor", item 6).

g-fig2: the spectrum of the metric tensor ([G] Fig. 2A), accuracy under 1,000 random unit-norm weight
perturbations (Fig. 2B/C) and under the adversarial one (Fig. 2D/E), for LeNet-300-100 (mlp2) trained on
mnist5k and the small CNN trained on fashion-mnist (VGG-11/CIFAR-10 cannot be run here: CIFAR-10 is not
available offline and VGG-11 on 2 cores is out of reach; the CNN stands in for it, as SPEC §5 asks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lesion.data import load
from lesion.geometry.attack import attack
from lesion.geometry.metric import MetricOperator
from lesion.geometry.spectrum import spectrum
from lesion.nets import build_net
from lesion.report.jsonio import provenance, write_json
from lesion.report.plots import attack_plot, spectrum_plot
from lesion.train import TrainSettings, evaluate, train

PAPER = {"mlp2": "LeNet-300-100 on MNIST: 98% → 70% adversarial at σ = 1; random 97.2–97.6%; ρ < 1e-3",
         "cnn": "VGG-11 on CIFAR-10: 91% → 13% adversarial at σ = 1; random 88–91%; ρ < 1e-4"}


def _network(name: str, quick: bool, seed: int) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    if name == "mlp2":
        data = load("mnist5k")
        model, _ = build_net("mlp2", data.input_shape, 10, seed=seed, dropout=0.2)
        settings = TrainSettings(epochs=5 if quick else 20, seed=seed)
        x_train, y_train = data.x_train, data.y_train
    else:
        data = load("fashion-mnist")
        model, _ = build_net("cnn", data.input_shape, 10, seed=seed)
        settings = TrainSettings(epochs=1 if quick else 2, seed=seed, batch_size=128)
        keep = 5000 if quick else 20000  # a 20,000-image subset: 2 epochs of the CNN fit in minutes on 2 cores
        x_train, y_train = data.x_train[:keep], data.y_train[:keep]
    train(model, x_train, y_train, settings)
    model.eval()
    info = {"data": data.to_dict(), "training": {"epochs": settings.epochs, "examples": len(x_train)}}
    return model, data, info


def figure2(out: Path, quick: bool = False, seed: int = 0, sigma: float = 1.0) -> dict[str, Any]:
    """[G] Fig. 2 for mlp2/mnist5k and cnn/fashion-mnist: spectra, random and adversarial accuracy at σ."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results, spectra = {}, {}
    for name in ("mlp2", "cnn"):
        model, data, info = _network(name, quick, seed)
        is_mlp = name == "mlp2"
        inputs = (300 if quick else 1000) if is_mlp else (100 if quick else 300)
        directions = (100 if quick else 1000) if is_mlp else (50 if quick else 200)
        x_an, y_an = data.x_train[:inputs], data.y_train[:inputs]
        x_ev, y_ev = data.x_test[: (1000 if is_mlp else 2000)], data.y_test[: (1000 if is_mlp else 2000)]
        spec = spectrum(MetricOperator(model, x_an), top=50, full=is_mlp)
        spectra[f"{name} ({data.name}, |X| = {inputs})"] = spec.eigenvalues
        result = attack(model, x_an, y_an, x_ev, y_ev, sigma, directions, k=20, seed=seed, bitflips=is_mlp)
        results[name] = {**info, "clean_test_accuracy": evaluate(model, data.x_test, data.y_test).accuracy,
                         "spectrum": spec.to_dict(), "attack": result.to_dict(), "paper": PAPER[name]}
    tau = 1e-3
    note = ("mlp2: all nonzero eigenvalues (Gram route); cnn: top 50 (Lanczos). Analysis inputs from the training "
            "split; the denominators of ρ are the parameter counts, the rank is at most 10·|X|.")
    spectrum_plot(out / "g-fig2.png", spectra, tau, "[G] Fig. 2A: spectra of the metric tensor", note)
    attack_plot(out / "g-fig2-attack.png", {k: v["attack"] for k, v in results.items()}, sigma)
    summary = {"figure": "g-fig2", "sigma": sigma, "networks": results, "provenance": provenance(seed=seed)}
    write_json(out / "g-fig2.json", summary)
    return summary


FIGURES = {"g-fig2": lambda out, quick: figure2(out, quick)}
