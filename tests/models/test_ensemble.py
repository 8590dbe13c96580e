"""The stacked ensemble MLP: every member equals an explicit per-member network, and members are independent."""

from __future__ import annotations

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.models.mlp import sinusoidal_embedding


def _reference(model: EnsembleMLP, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Member by member: h = act(W [x, emb(i)] + b) through the layers, no activation on the output."""
    c = model.config
    emb = sinusoidal_embedding(i.reshape(-1), c.time_dim).float().reshape(*i.shape, c.time_dim)
    out = []
    for e in range(c.members):
        h = torch.cat([x[e], emb[e]], -1)
        for layer, (w, b) in enumerate(zip(model.weights, model.biases)):
            h = h @ w[e] + b[e]
            if layer < len(model.weights) - 1:
                h = torch.nn.functional.silu(h)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("index", ["int", "batch", "member"])
def test_members_equal_explicit_networks(index):
    model = EnsembleMLP(EnsembleConfig(3, 5, width=7, depth=2, time_dim=4), torch.Generator().manual_seed(0))
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(1))
    full = torch.randint(0, 1000, (3, 6), generator=torch.Generator().manual_seed(2))
    i = {"int": 17, "batch": full[0], "member": full}[index]
    expanded = {"int": torch.full((3, 6), 17), "batch": full[0].expand(3, 6), "member": full}[index]
    torch.testing.assert_close(model(x, i, DDPMSchedule()), _reference(model, x, expanded), atol=1e-6, rtol=1e-6)


def test_members_are_independent():
    """The gradient of member 0's loss does not reach member 1, and same-seed ensembles agree."""
    config = EnsembleConfig(2, 4, width=8, depth=2, time_dim=4)
    model = EnsembleMLP(config, torch.Generator().manual_seed(0))
    twin = EnsembleMLP(config, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    model(torch.randn(2, 3, 4), 5)[0].sum().backward()
    assert all(float(p.grad[1].abs().max()) == 0.0 and float(p.grad[0].abs().max()) > 0 for p in model.parameters())


def test_bad_shapes_raise_config_errors():
    model = EnsembleMLP(EnsembleConfig(2, 4, width=8, depth=1, time_dim=4), torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="x_t must have shape"):
        model(torch.randn(3, 2, 4), 1)
    with pytest.raises(ConfigError, match="i must be"):
        model(torch.randn(2, 3, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="time_dim"):
        EnsembleConfig(2, 4, time_dim=3)
