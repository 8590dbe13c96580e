"""The stacked transformer ensemble: each member is a standard transformer encoder (checked against
torch.nn.TransformerEncoderLayer), members are independent, and the ensemble is an x0-predicting Denoiser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule, NoiseLevel, sample
from easyhard.models.mlp import sinusoidal_embedding
from easyhard.models.transformer import EnsembleTransformer, SequenceTransformerConfig

SCHEDULE = DDPMSchedule(T=50, beta_start=2e-3, beta_end=0.4, index_base=1)


def _config(members: int = 3, **kw) -> SequenceTransformerConfig:
    return SequenceTransformerConfig(members, 5, 4, **{"d_model": 8, "heads": 2, "ff": 12, "time_dim": 6, **kw})


def _model(members: int = 3, seed: int = 0, **kw) -> EnsembleTransformer:
    return EnsembleTransformer(_config(members, **kw), torch.Generator().manual_seed(seed))


def _inputs(members: int = 3, batch: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return torch.randn(members, batch, 5, 4, generator=gen), torch.randint(1, 51, (members, batch), generator=gen)


def _per_member_count(c: SequenceTransformerConfig) -> int:
    """Input, time and output maps, positions, per block qkv + output + two FF maps + two norms, final norm."""
    d = c.d_model
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * c.ff + c.ff) + (c.ff * d + d) + 2 * 2 * d
    final = 2 * d if c.norm == "pre" else 0
    return (c.q * d + d) + (c.time_dim * d + d) + c.length * d + c.layers * block + final + (d * c.q + c.q)


def test_parameter_counts_match_the_closed_form():
    demo = SequenceTransformerConfig(2, 8, 6)  # docs/theory/generalization.md section 12
    full = SequenceTransformerConfig(1, 16, 6, d_model=512, heads=4, layers=8, ff=1024, norm="post", dropout=0.1)
    for config in (demo, full, _config(norm="post")):
        model = EnsembleTransformer(config, torch.Generator().manual_seed(0))
        assert sum(p.numel() for p in model.parameters()) == config.members * _per_member_count(config)
    assert _per_member_count(demo) == 70_534


def _reference_member(model: EnsembleTransformer, e: int, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Member e's logits built from torch.nn: Linear input and time maps, nn.TransformerEncoderLayer blocks
    loaded with member e's weights, final LayerNorm for pre-norm. x (B, L, q), i (B,)."""
    c = model.config
    w = lambda p: p[e].T  # noqa: E731  (stacked (fan_in, fan_out) -> nn.Linear's (out, in))
    emb = sinusoidal_embedding(i, c.time_dim).float()
    h = x @ model.w_in[e] + model.b_in[e] + model.pos[e] + (emb @ model.w_time[e] + model.b_time[e])[:, None]
    for block in model.blocks:
        layer = nn.TransformerEncoderLayer(c.d_model, c.heads, c.ff, dropout=0.0, activation=c.activation,
                                           batch_first=True, norm_first=c.norm == "pre")
        state = {"self_attn.in_proj_weight": w(block.w_qkv), "self_attn.in_proj_bias": block.b_qkv[e, 0],
                 "self_attn.out_proj.weight": w(block.w_o), "self_attn.out_proj.bias": block.b_o[e, 0],
                 "linear1.weight": w(block.w_ff1), "linear1.bias": block.b_ff1[e, 0],
                 "linear2.weight": w(block.w_ff2), "linear2.bias": block.b_ff2[e, 0],
                 "norm1.weight": block.gain_1[e, 0], "norm1.bias": block.bias_1[e, 0],
                 "norm2.weight": block.gain_2[e, 0], "norm2.bias": block.bias_2[e, 0]}
        layer.load_state_dict(state)
        h = layer.eval()(h)
    if c.norm == "pre":
        h = nn.functional.layer_norm(h, (c.d_model,), model.final_gain[e, 0], model.final_bias[e, 0])
    return h @ model.w_out[e] + model.b_out[e]


@pytest.mark.parametrize("norm,activation", [("pre", "relu"), ("post", "gelu")])
@torch.no_grad()
def test_every_member_is_a_standard_transformer_encoder(norm, activation):
    model = _model(norm=norm, activation=activation, layers=2)
    x, i = _inputs()
    out = model.logits(x, i)
    for e in range(3):
        torch.testing.assert_close(out[e], _reference_member(model, e, x[e], i[e]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", ["int", "batch", "member"])
@torch.no_grad()
def test_member_equals_a_single_member_ensemble_with_its_weights(index):
    model = _model()
    x, full = _inputs()
    i = {"int": 17, "batch": full[0], "member": full}[index]
    out = model.logits(x, i)
    for e in range(3):
        single = _model(members=1, seed=5)
        for mine, stacked in zip(single.parameters(), model.parameters()):
            mine.copy_(stacked[e:e + 1])
        own = i[e:e + 1] if index == "member" else i
        torch.testing.assert_close(out[e:e + 1], single.logits(x[e:e + 1], own), atol=1e-6, rtol=1e-6)


def test_a_members_loss_reaches_only_its_own_parameters():
    model = _model()
    x, i = _inputs()
    model.logits(x, i)[1].square().sum().backward()
    for name, p in model.named_parameters():
        assert float(p.grad[[0, 2]].abs().max()) == 0.0, name
        assert float(p.grad[1].abs().max()) > 0.0, name


def test_initialisation_is_member_by_member():
    """Member e is the same in ensembles of any size from one seed; weights within +-1/sqrt(fan_in), gains 1,
    biases 0, positions of standard deviation 0.1."""
    small, large = _model(members=2, seed=4), _model(members=5, seed=4)
    assert all(torch.equal(a, b[:2]) for a, b in zip(small.parameters(), large.parameters()))
    assert not torch.equal(large.w_in[0], large.w_in[1])
    for name, p in large.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("w_"):
            assert float(p.detach().abs().max()) <= p.shape[1] ** -0.5
        elif leaf != "pos":
            assert torch.equal(p, torch.full_like(p, 1.0 if "gain" in leaf else 0.0)), name
    wide = EnsembleTransformer(SequenceTransformerConfig(4, 64, 4, d_model=64), torch.Generator().manual_seed(0))
    n = wide.pos.numel()
    assert abs(float(wide.pos.detach().std()) - 0.1) < 5 * 0.1 / (2 * n) ** 0.5


@torch.no_grad()
def test_the_denoiser_form_returns_probabilities_that_follow_the_index():
    model = _model()
    x, i = _inputs()
    probs = model(x, NoiseLevel.at_index(SCHEDULE, i[0]))
    assert probs.shape == x.shape and model.prediction == "x0" and model.ensemble
    torch.testing.assert_close(probs, torch.softmax(model.logits(x, i[0]), -1))
    torch.testing.assert_close(model(x, i[0], SCHEDULE), probs)
    torch.testing.assert_close(probs.sum(-1), torch.ones(x.shape[:-1]))
    assert not torch.allclose(model.logits(x, 1), model.logits(x, 40))  # the index enters the network


def test_dropout_acts_in_train_mode_only():
    model = _model(dropout=0.5)
    plain = _model(dropout=0.0)
    x, i = _inputs()
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.logits(x, i), plain.logits(x, i), rtol=0, atol=0)
        model.train()
        plain.train()
        assert not torch.allclose(model.logits(x, i), model.logits(x, i))
        torch.testing.assert_close(plain.logits(x, i), plain.logits(x, i), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ancestral_sampling_runs_on_the_ensemble(dtype):
    """Any state dtype: the network computes in its own and answers in the state's."""
    model = _model().eval()
    out = sample(model, SCHEDULE, (3, 6, 5, 4), method="ancestral", steps=8, generator=torch.Generator().manual_seed(0),
                 dtype=dtype)
    assert out.shape == (3, 6, 5, 4) and out.dtype == dtype and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(3, 6, 5, dtype=dtype), atol=1e-4, rtol=0)  # last x0_hat


@pytest.mark.parametrize("field,value,match", [
    ("d_model", 9, "d_model must be a multiple of heads"), ("time_dim", 5, "time_dim must be an even"),
    ("norm", "middle", "norm"), ("activation", "silu", "activation"), ("dropout", 1.0, r"dropout must lie in \[0, 1\)"),
    ("layers", 0, "layers must be an integer >= 1"), ("heads", 0, "heads must be an integer >= 1")])
def test_bad_configs_raise_config_errors(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _config(**{field: value})
    with pytest.raises(ConfigError, match="q must be an integer >= 2"):
        SequenceTransformerConfig(2, 5, 1)


def test_bad_inputs_raise_config_errors():
    model = _model()
    x, i = _inputs()
    with pytest.raises(ConfigError, match="x_t must have shape"):
        model.logits(x[:2], 3)
    with pytest.raises(ConfigError, match="x_t must have shape"):
        model.logits(x[..., :3], 3)
    with pytest.raises(ConfigError, match="i must be"):
        model.logits(x, i[:, :3])
