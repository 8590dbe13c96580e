"""The stacked transformer ensemble against E separate PyTorch transformers trained one after the other.

Usage: python benchmarks/sequence_ensemble.py [--members 18] [--threads 1] [--steps 20] [--json]

Both sides train E independent x0-predictors of the grammar's quick profile (L = 8, q = 6, d_model 64, 4 heads,
2 pre-norm layers, FF 128, batch 64 per member) with the token cross-entropy and Adam, in one process:

- **loop**: E ``torch.nn.TransformerEncoder`` models (same sizes, ``norm_first=True``) with their own input,
  position, time and output layers and their own Adam, stepped one after the other;
- **ensemble**: :class:`easyhard.models.EnsembleTransformer` with E members and one Adam over the stacked
  weights, the loss :func:`easyhard.train.finite.sequence_loss` (every member on its own batch).

Prints ms per step of all E members for each, and ``ratio = loop / ensemble`` (> 1 favours the ensemble).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from easyhard.diffusion import DDPMSchedule
from easyhard.models.mlp import sinusoidal_embedding
from easyhard.models.transformer import EnsembleTransformer, SequenceTransformerConfig
from easyhard.train.finite import sequence_loss

L, Q, D, HEADS, LAYERS, FF, TIME, BATCH = 8, 6, 64, 4, 2, 128, 32, 64
SCHEDULE = DDPMSchedule(T=500, beta_start=2e-4, beta_end=0.04, index_base=1)


class _Single(nn.Module):
    """One transformer x0-predictor built from torch.nn layers (the per-member reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.time = nn.Linear(Q, D), nn.Linear(TIME, D)
        self.pos = nn.Parameter(0.1 * torch.randn(L, D))
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.norm, self.out = nn.LayerNorm(D), nn.Linear(D, Q)

    def forward(self, x_t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        h = self.inp(x_t) + self.pos + self.time(sinusoidal_embedding(i, TIME).float())[:, None, :]
        return self.out(self.norm(self.body(h)))


def _loop_step(models, optimizers, x0: torch.Tensor, generator: torch.Generator) -> None:
    for e, (model, opt) in enumerate(zip(models, optimizers)):
        i = torch.randint(1, SCHEDULE.T + 1, (BATCH,), generator=generator)
        abar = SCHEDULE.alpha_bar(i).float()[:, None, None]
        x_t = abar.sqrt() * nn.functional.one_hot(x0[e], Q).float() + (1 - abar).sqrt() * torch.randn(
            BATCH, L, Q, generator=generator)
        loss = nn.functional.cross_entropy(model(x_t, i).reshape(-1, Q), x0[e].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _time(step, steps: int) -> float:
    """Seconds per call of ``step`` (best of 3 runs of ``steps`` calls, after 3 warm-up calls)."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=18)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    E = args.members
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, Q, (E, BATCH, L), generator=gen)
    models = [_Single() for _ in range(E)]
    optimizers = [torch.optim.Adam(m.parameters(), 1e-3) for m in models]
    loop = _time(lambda: _loop_step(models, optimizers, x0, gen), args.steps)
    ensemble_model = EnsembleTransformer(SequenceTransformerConfig(members=E, length=L, q=Q), gen)
    opt = torch.optim.Adam(ensemble_model.parameters(), 1e-3)

    def ensemble_step() -> None:
        loss = sequence_loss(ensemble_model, x0, SCHEDULE, gen, True).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ensemble = _time(ensemble_step, args.steps)
    row = {"members": E, "threads": args.threads, "loop_ms_per_step": 1e3 * loop,
           "ensemble_ms_per_step": 1e3 * ensemble, "ratio": loop / ensemble,
           "params_per_member": sum(p.numel() for p in ensemble_model.parameters()) // E,
           "reference_params": sum(p.numel() for p in models[0].parameters())}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"E = {E}, {args.threads} thread(s): loop of torch.nn transformers {row['loop_ms_per_step']:.1f} ms/step, "
              f"stacked ensemble {row['ensemble_ms_per_step']:.1f} ms/step, ratio {row['ratio']:.2f} "
              f"({row['params_per_member']} / {row['reference_params']} parameters per member)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
