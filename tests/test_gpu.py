"""GPU checks (marked `gpu`, skipped without CUDA; `make test-gpu`): a campaign and a spectrum on cuda equal the
same on the CPU. (A recovery on cuda is not checked yet.)"""

import copy

import pytest
import torch

from lesion.damage import Target, parse_damage
from lesion.damage.campaign import Campaign
from lesion.nets import MLP

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


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
    assert [s.faults for s in a.samples] == [s.faults for s in b.samples]
    for s, t in zip(a.samples, b.samples, strict=True):
        assert s.accuracy == pytest.approx(t.accuracy, abs=1 / 64 + 1e-9)
        assert s.output_error == pytest.approx(t.output_error, rel=1e-3, abs=1e-4)
    assert Target(gpu, example=x.cuda()).sites[0].width == 16


def test_spectrum_on_cuda_matches_cpu():
    from lesion.geometry.metric import MetricOperator
    from lesion.geometry.spectrum import top_eigenpairs

    cpu, gpu, x, y = _pair()
    top_cpu = top_eigenpairs(MetricOperator(cpu.double(), x.double()), 3)[0]
    top_gpu = top_eigenpairs(MetricOperator(gpu.double(), x.double().cuda()), 3)[0]
    torch.testing.assert_close(torch.as_tensor(top_gpu).cpu(), torch.as_tensor(top_cpu).cpu(), rtol=1e-6, atol=1e-9)
