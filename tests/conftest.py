"""Shared test set-up: one torch thread (2-core machine), no progress bars, small fixtures."""

import os

import pytest
import torch

os.environ.setdefault("LESION_NO_PROGRESS", "1")
torch.set_num_threads(1)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
