"""The stacked ensemble MLP: every member equals an explicit per-member network, and members are independent."""

from __future__ import annotations

import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.models.mlp import sinusoidal_embedding


def _reference(model: EnsembleMLP, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Member by member: h = act(W [x, emb(i)] + b [+ U emb(i) after the first layer]) through the layers, no
    activation on the output."""
    c = model.config
    emb = sinusoidal_embedding(i.reshape(-1), c.time_dim).float().reshape(*i.shape, c.time_dim)
    out = []
    for e in range(c.members):
        h = torch.cat([x[e], emb[e]], -1)
        for layer, (w, b) in enumerate(zip(model.weights, model.biases)):
            h = h @ w[e] + b[e]
            if 1 <= layer < len(model.weights) - 1 and c.time_input == "every":
                h = h + emb[e] @ model.time_weights[layer - 1][e]
            if layer < len(model.weights) - 1:
                h = torch.nn.functional.silu(h)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("time_input", ["first", "every"])
@pytest.mark.parametrize("index", ["int", "batch", "member"])
def test_members_equal_explicit_networks(index, time_input):
    config = EnsembleConfig(3, 5, width=7, depth=3, time_dim=4, time_input=time_input, init="lecun")
    model = EnsembleMLP(config, torch.Generator().manual_seed(0))
    with torch.no_grad():  # LeCun biases start at 0: give them values so that they are tested too
        for b in model.biases:
            b.normal_(generator=torch.Generator().manual_seed(3))
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(1))
    full = torch.randint(0, 1000, (3, 6), generator=torch.Generator().manual_seed(2))
    i = {"int": 17, "batch": full[0], "member": full}[index]
    expanded = {"int": torch.full((3, 6), 17), "batch": full[0].expand(3, 6), "member": full}[index]
    torch.testing.assert_close(model(x, i, DDPMSchedule()), _reference(model, x, expanded), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("options", [{}, {"time_input": "every", "init": "lecun", "output_scale": 0.5}])
def test_members_are_independent(options):
    """The gradient of member 0's loss does not reach member 1, and same-seed ensembles agree."""
    config = EnsembleConfig(2, 4, width=8, depth=3, time_dim=4, **options)
    model = EnsembleMLP(config, torch.Generator().manual_seed(0))
    twin = EnsembleMLP(config, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    model(torch.randn(2, 3, 4), 5)[0].sum().backward()
    assert all(float(p.grad[1].abs().max()) == 0.0 and float(p.grad[0].abs().max()) > 0 for p in model.parameters())


def test_time_maps_exist_only_for_every_hidden_layer_after_the_first():
    first = EnsembleMLP(EnsembleConfig(2, 3, width=6, depth=3, time_dim=4), torch.Generator().manual_seed(0))
    every = EnsembleMLP(EnsembleConfig(2, 3, width=6, depth=3, time_dim=4, time_input="every"),
                        torch.Generator().manual_seed(0))
    assert len(first.time_weights) == 0 and [tuple(u.shape) for u in every.time_weights] == [(2, 4, 6)] * 2
    # the time maps are drawn last: every other parameter equals the "first" model's
    assert all(torch.equal(a, b) for a, b in zip([*first.weights, *first.biases], [*every.weights, *every.biases]))


def test_lecun_initialisation_has_variance_one_over_fan_in_and_zero_biases():
    """U(-sqrt(3/fan_in), sqrt(3/fan_in)) has variance 1/fan_in and the bound as its largest magnitude."""
    model = EnsembleMLP(EnsembleConfig(8, 40, width=200, depth=2, time_dim=24, time_input="every", init="lecun"),
                        torch.Generator().manual_seed(0))
    for w in [p.detach() for p in (*model.weights[:-1], *model.time_weights)]:
        fan_in = w.shape[1]
        assert float(w.var()) == pytest.approx(1 / fan_in, rel=0.03)
        assert float(w.abs().max()) <= (3 / fan_in) ** 0.5 and float(w.abs().max()) > 0.99 * (3 / fan_in) ** 0.5
    assert all(float(b.detach().abs().max()) == 0.0 for b in model.biases)
    torch_init = EnsembleMLP(EnsembleConfig(8, 40, width=200, depth=2, time_dim=24), torch.Generator().manual_seed(0))
    assert float(torch_init.weights[1].detach().var()) == pytest.approx(1 / (3 * 200), rel=0.03)


@pytest.mark.parametrize("init", ["torch", "lecun"])
def test_output_scale_scales_the_initial_output(init):
    x = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(1))
    outputs = {scale: EnsembleMLP(EnsembleConfig(2, 5, width=16, depth=2, time_dim=4, init=init, output_scale=scale),
                                  torch.Generator().manual_seed(0))(x, 40) for scale in (1.0, 0.5, 3.0)}
    torch.testing.assert_close(outputs[0.5], 0.5 * outputs[1.0])
    torch.testing.assert_close(outputs[3.0], 3.0 * outputs[1.0])


def test_bad_options_raise_config_errors():
    for options, message in (({"time_input": "last"}, "time_input must be one of first, every"),
                             ({"init": "xavier"}, "init must be one of torch, lecun"),
                             ({"output_scale": 0.0}, "output_scale must be > 0"),
                             ({"output_scale": 101.0}, r"output_scale must lie in \(0, 100\]")):
        with pytest.raises(ConfigError, match=message):
            EnsembleConfig(2, 4, **options)


def test_bad_shapes_raise_config_errors():
    model = EnsembleMLP(EnsembleConfig(2, 4, width=8, depth=1, time_dim=4), torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="x_t must have shape"):
        model(torch.randn(3, 2, 4), 1)
    with pytest.raises(ConfigError, match="i must be"):
        model(torch.randn(2, 3, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="time_dim"):
        EnsembleConfig(2, 4, time_dim=3)
