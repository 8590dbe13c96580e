"""benchmarks/gpu_check.py: without CUDA it says so and exits 0; every check it names is a callable."""

import importlib.util
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run the script itself")
def test_without_cuda_it_exits_0_and_says_so(capsys):
    gpu_check = _module()
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert set(gpu_check.CHECKS) == {"online_graph_vs_eager", "reduced_cuda", "image_training",
                                     "reproduce_memorization", "reproduce_scaling", "online_sgd_rows",
                                     "reproduce_grammar", "grammar_bp_cuda", "monitor_cuda"}
    assert all(callable(check) for check in gpu_check.CHECKS.values())
