"""Hand your own denoiser to easyhard's sampler and memorisation diagnostics in one line.

A tiny eps-predicting ``torch.nn.Module``, called like a diffusers model as ``module(x_t, t)`` with t the
integer timestep, is trained for a few hundred steps on n = 32 points of a Gaussian mixture in d = 4,
wrapped with ``EpsModel(module, schedule)``, sampled with DDIM and checked against its training set with
``memorization_fraction`` and ``nearest_neighbours``. Runs in a few seconds on a CPU:

    python examples/own_denoiser.py
"""

import torch
from torch import nn

from easyhard.data.mixture import random_mixture
from easyhard.diffusion import DDPMSchedule, EpsModel, sample
from easyhard.metrics import memorization_fraction, nearest_neighbours


class TinyEps(nn.Module):
    """eps_hat = MLP([x_t, sin(pi t / T), cos(pi t / T)]): any module with forward(x_t, t) would do."""

    def __init__(self, d: int, T: int, width: int = 128) -> None:
        super().__init__()
        self.T = T
        self.net = nn.Sequential(nn.Linear(d + 2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, d))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = torch.pi * t.to(x_t.dtype)[:, None] / self.T
        return self.net(torch.cat([x_t, torch.sin(phase), torch.cos(phase)], dim=-1))


def main() -> None:
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    law = random_mixture(d=4, components=4, seed=0)
    train, fresh = law.sample(32, gen).float(), law.sample(256, gen).float()
    schedule = DDPMSchedule(T=1000)
    module = TinyEps(d=4, T=schedule.T)

    # the user's own training loop: the standard DDPM eps-loss at a uniform timestep
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(400):
        x0 = train[torch.randint(0, len(train), (128,), generator=gen)]
        t = torch.randint(0, schedule.T, (128,), generator=gen)
        x_t, eps = schedule.add_noise(x0, t, gen)
        loss = ((module(x_t, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    denoiser = EpsModel(module, schedule)  # the one line: now a Denoiser for every sampler and metric
    samples = sample(denoiser, schedule, (256, 4), method="ddim", steps=25, generator=gen)

    f_mem = memorization_fraction(samples, train)
    d_samples, _ = nearest_neighbours(samples, train, k=1)
    d_fresh, _ = nearest_neighbours(fresh, train, k=1)
    print(f"final training loss {loss.item():.3f}")
    print(f"memorisation fraction (d1/d2 < 1/3): {f_mem.value:.3f}, 95% interval "
          f"[{f_mem.interval[0]:.3f}, {f_mem.interval[1]:.3f}]")
    print(f"median distance to the nearest training point: samples {d_samples.median().item():.3f}, "
          f"fresh data {d_fresh.median().item():.3f}")


if __name__ == "__main__":
    main()
