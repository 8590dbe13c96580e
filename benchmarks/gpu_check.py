"""GPU readiness in one call: every CUDA path of easyhard at small size, a pass/fail line and a timing each.

    python benchmarks/gpu_check.py [--json] [--only NAME[,NAME...]]

Checks (each isolated: a failure is reported and the next check runs):

1. ``online_graph_vs_eager``: the torch online-SGD engine on CUDA, whose blocks of steps are captured once in a
   CUDA graph and replayed, against the same block program launched eagerly (capture switched off): the same
   overlaps and losses (the block noise is drawn outside the graph from the same generator; tolerance 1e-6).
2. ``reduced_cuda``: the exact reduced simulator on CUDA (torch, all members at once) against the CPU numba
   kernel in law: two-sample KS test of the recovery times (p > 0.001) and the same recovered fraction +- 0.1.
3. ``image_training``: image training on CUDA (bf16 autocast, channels-last, fused Adam) with and without
   ``torch.compile``, images/s against the diffusers-style reference loop (benchmarks/image_training.py).
4. ``reproduce_memorization`` and ``reproduce_scaling``: ``easyhard reproduce NAME --profile smoke --device
   cuda`` end to end (exit code 0, results.json written, device recorded).
5. ``monitor_cuda``: easyhard.monitor on a diffusers UNet and its twin on CUDA against the CPU (same records
   within 1e-3).
6. ``online_sgd_rows``: the CUDA rows of benchmarks/online_sgd.py at small sizes (member-steps/s, us per step,
   fraction of the 12-bytes-per-element traffic limit).

Without CUDA it says so and exits 0. Sized to finish in well under 8 minutes on one H100.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sibling(name: str):
    """Import the benchmark module ``name`` (a file next to this one) as a module."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def online_graph_vs_eager() -> dict:
    import numpy as np

    from easyhard.data import MixedCumulantModel
    from easyhard.models import Committee
    from easyhard.train import OnlineSGDConfig, run_online_sgd

    from easyhard.train.online import torch_engine

    def eager_blocks(self, i0: int, i1: int, step0: int) -> int:  # the block program without capture
        B = self.static["noise"].shape[0]
        while i1 - i0 >= B:
            self._fill_block(i0, step0)
            self._block()
            i0 += B
        return i0

    d, E, steps = 256, 64, 2000
    data = MixedCumulantModel.create(d=d, beta_u=5.0, beta_v=5.0)
    config = OnlineSGDConfig(steps=steps, delta=0.5, engine="torch", device="cuda", n_logs=20)
    runs = {}
    captured = torch_engine.TorchEngine._run_blocks
    for name in ("graph", "eager"):
        torch_engine.TorchEngine._run_blocks = captured if name == "graph" else eager_blocks
        try:
            start = time.perf_counter()
            runs[name] = run_online_sgd(Committee(d=d, K=1), data, config, range(E))
            runs[name + "_s"] = time.perf_counter() - start
        finally:
            torch_engine.TorchEngine._run_blocks = captured
    diff = float(np.max(np.abs(runs["graph"].overlaps - runs["eager"].overlaps)))
    loss = float(np.nanmax(np.abs(runs["graph"].loss - runs["eager"].loss) / np.maximum(np.abs(runs["eager"].loss),
                                                                                         1e-12)))
    ok = diff <= 1e-6 and loss <= 1e-6
    return {"pass": ok, "max_overlap_diff": diff, "max_loss_rel_diff": loss,
            "graph_s": runs["graph_s"], "eager_s": runs["eager_s"], "speedup": runs["eager_s"] / runs["graph_s"]}


def reduced_cuda() -> dict:
    import numpy as np
    from scipy.stats import ks_2samp

    from easyhard.experiments.scaling import RecoveryConfig, run_recovery

    cells = {}
    for device in ("cpu", "cuda"):
        cell = RecoveryConfig(d=32, seeds=512, budget=0.15, engine="reduced", device=device)
        start = time.perf_counter()
        cells[device] = run_recovery(cell)
        cells[device + "_s"] = time.perf_counter() - start
    t_cpu, t_gpu = (np.asarray(cells[k]["times"], float) for k in ("cpu", "cuda"))
    p = float(ks_2samp(np.where(t_cpu < 0, np.inf, t_cpu), np.where(t_gpu < 0, np.inf, t_gpu)).pvalue)
    frac = (cells["cpu"]["recovered_fraction"], cells["cuda"]["recovered_fraction"])
    return {"pass": p > 1e-3 and abs(frac[0] - frac[1]) <= 0.1, "ks_p": p, "recovered_cpu": frac[0],
            "recovered_cuda": frac[1], "cpu_s": cells["cpu_s"], "cuda_s": cells["cuda_s"]}


def image_training() -> dict:
    bench = _sibling("image_training")
    batch, steps = 256, 30
    ref = bench.reference_rate(batch, steps, "cuda")
    eager = bench._last_interval_rate(batch, steps, "cuda", False)
    compiled = bench._last_interval_rate(batch, steps, "cuda", True)
    return {"pass": eager > 0 and compiled > 0, "reference_images_per_s": ref, "images_per_s": eager,
            "compiled_images_per_s": compiled, "ratio": eager / ref, "compiled_ratio": compiled / ref}


def _reproduce(name: str) -> dict:
    from easyhard.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        code = main(["reproduce", name, "--profile", "smoke", "--device", "cuda", "--out", tmp])
        results = Path(tmp) / "results.json"
        run = json.loads((Path(tmp) / "run.json").read_text()) if results.exists() else {}
    device = run.get("config", {}).get("configs", {}).get(name, {}).get("device")
    return {"pass": code == 0 and results.exists() and device == "cuda", "exit_code": code, "device": device}


def reproduce_memorization() -> dict:
    return _reproduce("memorization")


def reproduce_scaling() -> dict:
    return _reproduce("scaling")


def reproduce_grammar() -> dict:
    return _reproduce("grammar")


def grammar_bp_cuda() -> dict:
    """Belief propagation and BP posterior sampling on CUDA against the CPU (same inputs, float64)."""
    import torch

    from easyhard.data import HierarchicalGrammar
    from easyhard.diffusion import DDPMSchedule, SamplerNoise, sample_sequences
    from easyhard.oracles import BeliefPropagationDenoiser

    grammar = HierarchicalGrammar.create(depth=4, q=6, q_eff=4, seed=0)
    x = torch.randn(512, 16, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bp = BeliefPropagationDenoiser(grammar, factorised=2)
    error = float((bp(x.cuda(), 0.4).cpu() - bp(x, 0.4)).abs().max())
    schedule = DDPMSchedule(T=500, beta_start=2e-4, beta_end=0.04, index_base=1)
    noise = SamplerNoise.draw((256, 16, 6), torch.Generator("cuda").manual_seed(1), dtype=torch.float64)
    tokens = sample_sequences(BeliefPropagationDenoiser(grammar), schedule, (256, 16, 6), 50, noise=noise)
    grammatical = float(grammar.is_grammatical(tokens).double().mean())
    return {"pass": error < 1e-10 and grammatical == 1.0 and tokens.is_cuda, "max_error": error,
            "grammatical": grammatical}


def monitor_cuda() -> dict:
    """The monitor of a diffusers UNet (with a twin) on CUDA against the same monitor on the CPU: losses per level,
    f_mem and the paired similarity agree (tolerance 1e-3: different kernels, float32)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from easyhard.monitor import Monitor, MonitorConfig
    from easyhard.monitor.adapters import diffusers

    def unet(seed):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                           layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"))

    data = torch.tanh(torch.randn(600, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    scheduler = DDPMScheduler()
    config = MonitorConfig(samples=128, pair_samples=64, n_boot=100, sampler_steps=20, pair_steps=20)
    records = {}
    for device in ("cpu", "cuda"):
        nets = [unet(1).to(device), unet(2).to(device)]
        with tempfile.TemporaryDirectory() as out:
            monitor = Monitor(diffusers(nets[0], scheduler), data[:64].to(device), data[128:].to(device), out,
                              twin=diffusers(nets[1], scheduler), twin_train=data[64:128].to(device), config=config,
                              report=False)
            records[device] = monitor.update(0)
    a, b = records["cpu"], records["cuda"]
    loss_error = max(abs(x - y) for x, y in zip(a["test_loss"] + a["train_loss"], b["test_loss"] + b["train_loss"]))
    pair_error = abs(a["pair_similarity"] - b["pair_similarity"])
    fmem_error = abs(a["f_mem"]["1/3"]["value"] - b["f_mem"]["1/3"]["value"])
    return {"pass": loss_error < 1e-3 and pair_error < 1e-3 and fmem_error <= 2 / 128, "loss_error": loss_error,
            "pair_error": pair_error, "fmem_error": fmem_error, "cuda_seconds": b["seconds"],
            "cpu_seconds": a["seconds"]}


def online_sgd_rows() -> dict:
    bench = _sibling("online_sgd")
    args = argparse.Namespace(quick=True, repeats=1, target=0.3, n_logs=40, cuda=True)
    bandwidth = bench.cuda_bandwidth(nbytes=1 << 28, reps=5)
    rows = []
    for d in (128, 1024):
        for E in (1024, 8192):
            eng = bench.time_engine(d, E, args, "torch", "cuda", max_steps=bench.cuda_max_steps(d, E))
            rate = eng["engine"]
            rows.append({"d": d, "E": E, "member_steps_per_s": rate, "us_per_step": 1e6 * E / rate,
                         "traffic_fraction": rate * 12 * d / bandwidth})
    return {"pass": all(r["member_steps_per_s"] > 0 for r in rows), "bandwidth_GBps": bandwidth / 1e9, "rows": rows}


CHECKS: dict[str, Callable[[], dict]] = {
    "online_graph_vs_eager": online_graph_vs_eager,
    "reduced_cuda": reduced_cuda,
    "image_training": image_training,
    "reproduce_memorization": reproduce_memorization,
    "reproduce_scaling": reproduce_scaling,
    "reproduce_grammar": reproduce_grammar,
    "grammar_bp_cuda": grammar_bp_cuda,
    "monitor_cuda": monitor_cuda,
    "online_sgd_rows": online_sgd_rows,
}


def _line(name: str, result: dict) -> str:
    status = "PASS" if result.get("pass") else "FAIL"
    detail = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                       if k not in ("pass", "rows", "error", "seconds"))
    return f"{status} {name:<24} {result['seconds']:7.1f} s  {detail}" + (
        f"  error: {result['error']}" if "error" in result else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object with every result")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch: nothing to check (exit 0)")
        return 0
    names = list(CHECKS) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"gpu_check: error: --only must name checks among {', '.join(CHECKS)} (got {', '.join(unknown)})",
              file=sys.stderr)
        return 2
    print(f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    results = {}
    for name in names:
        start = time.perf_counter()
        try:
            result = CHECKS[name]()
        except Exception as err:  # report and go on with the next check
            result = {"pass": False, "error": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}",
                      "traceback": traceback.format_exc(limit=5)}
        result["seconds"] = time.perf_counter() - start
        results[name] = result
        print(_line(name, {k: v for k, v in result.items() if k != "traceback"}), flush=True)
        for row in result.get("rows", []):
            print("     " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        torch.cuda.empty_cache()
    passed = sum(r["pass"] for r in results.values())
    print(f"{passed}/{len(results)} checks pass")
    if args.json:
        print(json.dumps(results))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
