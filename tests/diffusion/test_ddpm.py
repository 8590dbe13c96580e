import dataclasses
import math
from decimal import Decimal

import pytest
import torch

from easyhard import ConfigError
from easyhard.diffusion import DDPMSchedule, ou_coefficients

# Reference values for the linear schedule 1e-4..0.02, T = 1000, index base 0, quoted to the
# stated significant digits: (index, abar_i, OU time -ln(abar_i)/2).
REFERENCE = [
    (40, "0.980", "0.010"),
    (50, "0.970", "0.015"),
    (100, "0.895", "0.055"),
    (150, "0.786", "0.121"),
    (200, "0.656", "0.211"),
    (300, "0.394", "0.466"),
    (500, "0.078", "1.28"),
    (800, "0.0015", "3.25"),
    (999, "4.0e-5", "5.06"),
]


def _quoted(value: str):
    """pytest.approx accepting either 1% relative error or half a unit in the last quoted digit."""
    half_unit = 0.5 * 10.0 ** Decimal(value).as_tuple().exponent
    return pytest.approx(float(value), rel=0.01, abs=half_unit)


@pytest.mark.parametrize("i, abar, t", REFERENCE)
def test_linear_schedule_reference_values(i, abar, t):
    schedule = DDPMSchedule()
    assert schedule.alpha_bar(i) == _quoted(abar)
    assert schedule.ou_time(i) == _quoted(t)


def test_linear_schedule_matches_product_formula():
    schedule = DDPMSchedule(T=50, beta_start=1e-3, beta_end=0.05)
    betas = [1e-3 + (0.05 - 1e-3) * k / 49 for k in range(50)]
    assert schedule.betas.tolist() == pytest.approx(betas, rel=1e-13)
    for i in [0, 1, 17, 49]:
        assert schedule.alpha_bar(i) == pytest.approx(math.prod(1 - b for b in betas[: i + 1]), rel=1e-13)


def test_beta_end_001_leaves_terminal_state_noisy():
    assert DDPMSchedule(beta_end=0.01).alpha_bar(999) == _quoted("6.3e-3")


def _cosine_alpha_bar_closed_form(k: int, T: int, offset: float = 0.008) -> float:
    """abar at 0-based step k = f(k + 1) / f(0) with f(u) = cos^2((u/T + s)/(1 + s) pi/2)."""
    def f(u):
        return math.cos((u / T + offset) / (1 + offset) * math.pi / 2) ** 2
    return f(k + 1) / f(0)


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_schedule_closed_form(T):
    schedule = DDPMSchedule(kind="cosine", T=T)
    betas = schedule.betas
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert bool((betas > 0).all()) and bool((betas <= 0.999).all())
    assert float(betas[-1]) == 0.999  # f(T) = 0 gives beta = 1, clipped
    abar = schedule.alphas_bar
    for k in range(T - 1):  # unclipped steps follow the closed form exactly
        assert float(abar[k]) == pytest.approx(_cosine_alpha_bar_closed_form(k, T), rel=1e-12)
    assert float(abar[-1]) == pytest.approx(float(abar[-2]) * 0.001, rel=1e-12)


def test_index_base_one_shifts_indices():
    base0, base1 = DDPMSchedule(index_base=0), DDPMSchedule(index_base=1)
    assert torch.equal(base0.alphas_bar, base1.alphas_bar)
    for i in [1, 2, 500, 1000]:
        assert base1.alpha_bar(i) == base0.alpha_bar(i - 1)
        assert base1.ou_time(i) == base0.ou_time(i - 1)
    assert base1.alpha_bar(1) == pytest.approx(1 - 1e-4, rel=1e-15)
    assert list(base1.indices) == list(range(1, 1001))
    with pytest.raises(ConfigError, match=r"\[1, 1000\]"):
        base1.alpha_bar(0)
    with pytest.raises(ConfigError, match=r"\[0, 999\]"):
        base0.alpha_bar(1000)


def test_tensor_indices_and_coefficients():
    schedule = DDPMSchedule(T=200)
    idx = torch.tensor([0, 5, 199])
    abar = schedule.alpha_bar(idx)
    assert abar.dtype == torch.float64
    assert abar.tolist() == [schedule.alpha_bar(int(i)) for i in idx]
    a, s = schedule.coefficients(idx)
    torch.testing.assert_close(a**2 + s**2, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(a, abar.sqrt(), rtol=0, atol=0)
    # DDPM step i is the OU process at t_i = -ln(abar_i)/2
    for i in [3, 100]:
        a_ou, s_ou = ou_coefficients(schedule.ou_time(i))
        a_i, s_i = schedule.coefficients(i)
        assert (a_ou, s_ou) == pytest.approx((a_i, s_i), rel=1e-12)
    with pytest.raises(ConfigError, match="step index"):
        schedule.alpha_bar(torch.tensor([0.5]))
    with pytest.raises(ConfigError, match="step index"):
        schedule.alpha_bar(torch.tensor([-1, 3]))
    with pytest.raises(ConfigError, match="step index"):
        schedule.alpha_bar(2.5)


@pytest.mark.parametrize("base", [0, 1])
def test_index_for_ou_time_is_nearest(base):
    schedule = DDPMSchedule(index_base=base)
    for i in [base, base + 40, base + 500, base + 999]:
        assert schedule.index_for_ou_time(schedule.ou_time(i)) == i
    times = schedule.ou_times
    t = torch.tensor([0.05, 1.0, 2.5, 100.0], dtype=torch.float64)
    found = schedule.index_for_ou_time(t)
    assert found.dtype == torch.long
    for tk, ik in zip(t.tolist(), found.tolist()):
        brute = min(range(1000), key=lambda k: abs(float(times[k]) - tk)) + base
        assert ik == brute
    with pytest.raises(ConfigError, match="t must"):
        schedule.index_for_ou_time(0.0)


def test_add_noise_formula_and_generator():
    schedule = DDPMSchedule(T=100)
    x0 = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    i = torch.tensor([0, 10, 50, 99])
    x_i, eps = schedule.add_noise(x0, i, generator=torch.Generator().manual_seed(7))
    assert x_i.dtype == torch.float32 and eps.shape == x0.shape
    expected_eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(eps, expected_eps)
    for b in range(4):
        a = math.sqrt(schedule.alpha_bar(int(i[b])))
        torch.testing.assert_close(x_i[b], a * x0[b] + math.sqrt(1 - a**2) * eps[b])


def test_dict_round_trip_and_validation():
    schedule = DDPMSchedule(kind="cosine", T=64, index_base=1)
    data = schedule.to_dict()
    assert data["index_base"] == 1 and data["kind"] == "cosine"
    restored = DDPMSchedule.from_dict(data)
    assert restored == schedule and torch.equal(restored.alphas_bar, schedule.alphas_bar)
    with pytest.raises(ConfigError, match="missing"):
        DDPMSchedule.from_dict({k: v for k, v in data.items() if k != "index_base"})
    with pytest.raises(ConfigError, match="unknown"):
        DDPMSchedule.from_dict({**data, "offset": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.T = 3


@pytest.mark.parametrize("kwargs, name", [
    ({"kind": "sigmoid"}, "kind"),
    ({"T": 0}, "T"),
    ({"T": 2.5}, "T"),
    ({"beta_start": 0.0}, "beta_start"),
    ({"beta_end": 1.0}, "beta_end"),
    ({"beta_start": 0.03, "beta_end": 0.02}, "beta_end"),
    ({"index_base": 2}, "index_base"),
    ({"cosine_offset": -0.1}, "cosine_offset"),
])
def test_schedule_rejects_bad_config(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        DDPMSchedule(**kwargs)
