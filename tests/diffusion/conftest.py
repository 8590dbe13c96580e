"""Shared fixtures of the diffusion tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small (B, d) matmuls are dominated by thread overhead on shared CPUs: run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
