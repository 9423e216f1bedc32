"""GPU checks (marked `gpu`, skipped without CUDA; `make test-gpu`): a campaign and a spectrum on cuda equal the
same on the CPU, and so do the recovery methods (naive, geodesic, fine-tuning, OBS) on an MLP (factored Jacobian
rows) and on a class model (autograd rows)."""

import copy

import pytest
import torch

from lesion.damage import Target, parse_damage
from lesion.damage.campaign import Campaign
from lesion.nets import MLP

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _same_faults(a, b) -> bool:
    """Fault records equal, except that a float in them (a perturbation's norm, summed on the device in the
    device's order) may differ by rounding."""
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_faults(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_faults(u, v) for u, v in zip(a, b, strict=True))
    return a == b


def _pair():
    torch.manual_seed(0)
    cpu = MLP(20, [16, 12], 4).eval()
    x = torch.rand(64, 20, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(2))
    return cpu, copy.deepcopy(cpu).cuda(), x, y


def test_campaign_on_cuda_matches_cpu():
    cpu, gpu, x, y = _pair()
    damages = [parse_damage(s) for s in ("crash:1:frac=0.3", "bitflip:ber=1e-4", "gauss:0.1", "filter:2:0,1")]
    a = Campaign(cpu, x, y, damages, seed=3).run(20, None)
    b = Campaign(gpu, x.cuda(), y.cuda(), damages, seed=3).run(20, None)
    assert _same_faults([s.faults for s in a.samples], [s.faults for s in b.samples])
    for s, t in zip(a.samples, b.samples, strict=True):
        assert s.accuracy == pytest.approx(t.accuracy, abs=1 / 64 + 1e-9)
        assert s.output_error == pytest.approx(t.output_error, rel=1e-3, abs=1e-4, nan_ok=True)
    assert Target(gpu, example=x.cuda()).sites[0].width == 16


def test_activation_faults_and_protection_on_cuda_match_cpu():
    # transient activation faults (the hit-inputs path) and weight flips with a protected bit
    cpu, gpu, x, y = _pair()
    damages = [parse_damage(s) for s in ("act-bitflip:1:ber=1e-3", "act-stuck:2:rate=0.01", "bitflip:ber=1e-3")]
    protected = {"fc1.weight": frozenset({30})}
    a = Campaign(cpu, x, y, damages, seed=5, protected=protected).run(20, None)
    b = Campaign(gpu, x.cuda(), y.cuda(), damages, seed=5, protected=protected).run(20, None)
    assert _same_faults([s.faults for s in a.samples], [s.faults for s in b.samples])
    for s, t in zip(a.samples, b.samples, strict=True):
        assert s.accuracy == pytest.approx(t.accuracy, abs=1 / 64 + 1e-9)


def test_spectrum_on_cuda_matches_cpu():
    from lesion.geometry.metric import MetricOperator
    from lesion.geometry.spectrum import top_eigenpairs

    cpu, gpu, x, y = _pair()
    top_cpu = top_eigenpairs(MetricOperator(cpu.double(), x.double()), 3)[0]
    top_gpu = top_eigenpairs(MetricOperator(gpu.double(), x.double().cuda()), 3)[0]
    torch.testing.assert_close(torch.as_tensor(top_gpu).cpu(), torch.as_tensor(top_cpu).cpu(), rtol=1e-6, atol=1e-9)
    # every nonzero eigenvalue (Gram route; on cuda the eigen-decomposition runs there, in float64)
    from lesion.geometry.spectrum import spectrum

    full_cpu, full_gpu = spectrum(MetricOperator(cpu, x.double())), spectrum(MetricOperator(gpu, x.double().cuda()))
    assert full_gpu.rank == full_cpu.rank and full_cpu.rank > 100
    torch.testing.assert_close(torch.tensor(full_gpu.eigenvalues), torch.tensor(full_cpu.eigenvalues), rtol=1e-4,
                               atol=1e-5 * full_cpu.eigenvalues[0])


class _Net(torch.nn.Module):
    """An MLP written as a class (not a Sequential): the recovery takes the autograd Jacobian-rows route."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(20, 16), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("kind", ["mlp", "class"])
def test_recovery_on_cuda_matches_cpu(kind):
    from lesion.geometry.damage_set import parse_delete
    from lesion.geometry.recovery import RecoveryProblem, recover

    cpu, _, x, y = _pair()
    if kind == "class":
        torch.manual_seed(0)
        cpu = _Net().eval()
    cpu = cpu.double()
    gpu = copy.deepcopy(cpu).cuda()
    x = x.double()
    results = []
    for model, xs, ys in ((cpu, x, y), (gpu, x.cuda(), y.cuda())):
        damage = parse_delete(model, "units:1:frac=0.5", torch.Generator().manual_seed(0), xs[:2])
        problem = RecoveryProblem(model, xs, ys, xs, ys, damage)
        out, weights = recover(problem, ["naive", "geodesic", "obs", "finetune"], 1.0, 0,
                               {"betas": (1.0,), "max_steps": 5})
        results.append((damage, out, weights))
    (d_cpu, r_cpu, w_cpu), (d_gpu, r_gpu, w_gpu) = results
    assert torch.equal(d_cpu.indices.cpu(), d_gpu.indices.cpu())
    for method in r_cpu:
        assert r_cpu[method].accuracy == pytest.approx(r_gpu[method].accuracy, abs=1 / 64 + 1e-9), method
        assert w_gpu[method].device.type == "cuda", method
        tol = 1e-3 if method == "finetune" else 1e-8  # Adam on cuda sums in another order
        torch.testing.assert_close(w_gpu[method].cpu(), w_cpu[method], rtol=tol, atol=tol)


def test_report_on_cuda_runs_every_stage_and_matches_the_cpu_accuracy(tmp_path):
    import json

    from lesion.cli import main

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    torch.save(model, tmp_path / "m.pt")
    for device in ("cpu", "cuda"):
        assert main(["report", "--quick", "--model", str(tmp_path / "m.pt"), "--data", "digits", "--device", device,
                     "--out", str(tmp_path / device)]) == 0
    cpu, gpu = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("cpu", "cuda"))
    assert gpu["network"]["clean"]["accuracy"] == pytest.approx(cpu["network"]["clean"]["accuracy"], abs=1e-9)
    for stage in ("crash", "geometry", "breakdown", "recovery", "bitflips"):
        assert "skipped" not in gpu[stage], stage
    assert gpu["crash"]["rows"][0]["omega_av"] == pytest.approx(cpu["crash"]["rows"][0]["omega_av"], rel=1e-5)


def _campaigns_on(build: str, specs: tuple[str, ...], device: str, samples: int = 12):
    """A campaign of `specs` on zoo model `build` on `device`: the model, its inputs and labels built on the CPU
    from fixed seeds and moved there (so that both devices start from the same bits)."""
    import zoo
    from lesion.nets.outputs import logits_view

    model = logits_view(zoo.gpt2()) if build == "gpt2" else getattr(zoo, build)()
    if build == "gpt2":
        x = torch.randint(0, 97, (16, 12), generator=torch.Generator().manual_seed(7))
        y = torch.roll(x, -1, dims=1)  # next-token labels, one per position
    else:
        x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(7))
        y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(8))
    model, x, y = model.to(device), x.to(device), y.to(device)
    return Campaign(model, x, y, [parse_damage(s) for s in specs], seed=11).run(samples, None)


@pytest.mark.parametrize("build, specs", [
    ("resnet18", ("bitflip:ber=1e-7", "crash:layer1.0.act1:frac=0.25", "filter:conv1:count=8")),
    ("vit", ("crash:blocks.0.mlp.act:frac=0.5", "head:blocks.1.attn:count=2", "bitflip:ber=1e-6")),
    ("gpt2", ("head:transformer.h.0.attn:count=2", "crash:transformer.h.1.mlp.act:frac=0.3", "bitflip:ber=1e-6")),
])
def test_zoo_campaigns_on_cuda_match_cpu(build, specs):
    """Real architectures (timm ResNet with BatchNorm and in-place residual adds, timm ViT, transformers GPT-2
    with Conv1D and per-token outputs): the same faults configuration by configuration, the same accuracies
    (one input may flip on a near tie) and output errors to float32 rounding of a different kernel order."""
    a, b = _campaigns_on(build, specs, "cpu"), _campaigns_on(build, specs, "cuda")
    assert _same_faults([s.faults for s in a.samples], [s.faults for s in b.samples])
    inputs = 16 * 12 if build == "gpt2" else 32
    assert a.clean_accuracy == pytest.approx(b.clean_accuracy, abs=1 / inputs + 1e-9)
    for s, t in zip(a.samples, b.samples, strict=True):
        assert s.accuracy == pytest.approx(t.accuracy, abs=1 / inputs + 1e-9)
        assert s.output_error == pytest.approx(t.output_error, rel=1e-3, abs=1e-4, nan_ok=True)


def test_compensation_on_cuda_matches_cpu():
    """Closed-form compensation (ridge fit of deleted units from kept ones, folded into the reader) on a conv
    net: the same repaired weights on cuda as on the CPU, in float64."""
    from lesion.geometry.compensate import compensate
    from lesion.geometry.damage_set import parse_delete
    from lesion.geometry.recovery import RecoveryProblem

    torch.manual_seed(0)
    cpu = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 24), torch.nn.ReLU(),
                              torch.nn.Linear(24, 5)).double().eval()
    x = torch.rand(96, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (96,), generator=torch.Generator().manual_seed(2))
    weights = []
    for model in (cpu, copy.deepcopy(cpu).cuda()):
        xs, ys = x.to(model[0].weight.device), y.to(model[0].weight.device)
        damage = parse_delete(model, "units:2:3,5", torch.Generator().manual_seed(0), xs[:2])
        problem = RecoveryProblem(model, xs, ys, xs, ys, damage)
        weights.append(compensate(problem, calibration=96)[1])
    assert weights[1].device.type == "cuda"
    torch.testing.assert_close(weights[1].cpu(), weights[0], rtol=1e-7, atol=1e-9)
