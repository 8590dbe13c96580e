"""Online-SGD engines and driver: numba kernel vs torch engine vs autograd, determinism, ensembles, finite-n mode,
checkpoints."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data import MixedCumulantModel
from easyhard.data.latents import Rademacher
from easyhard.models import Committee
from easyhard.oracles import make_activation
from easyhard.train import DivergenceError, OnlineSGDConfig, log_steps, run_online_sgd
from easyhard.train._kernel import ACTIVATION_CODES, _activation, run_steps
from easyhard.train._rng import fill_normal, seed_states
from easyhard.train.online import torch_engine
from easyhard.train.online.numba_engine import matched_coefficients

D = 16
MODES = {
    "online": {},
    "finite": {"n_samples": 7},
    "plain": {"spherical": False, "delta": 0.05},
    "random-t-eps": {"t_range": (0.1, 1.0), "weighting": "eps"},
}
NETS = {
    "single": Committee(d=D),
    "tied-K2": Committee(d=D, K=2, a_out=0.7, activation=make_activation("erf")),
    "untied-K3": Committee(d=D, K=3, second_layer="untied", omega=0.5),
}


def _run(net, data, seeds, engine="numba", steps=150, **kw):
    cfg = OnlineSGDConfig(steps=steps, dtype="float64", engine=engine, n_logs=12, **kw)
    return run_online_sgd(net, data, cfg, seeds)


def _sign_model(spikes="random"):
    return MixedCumulantModel.create(d=D, beta_u=5.0, beta_v=5.0, beta_m=0.5, coupling="sign", spikes=spikes)


@pytest.fixture(scope="module")
def sign_model():
    return _sign_model()


@pytest.mark.parametrize("spikes", ["random", "fixed"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("net", NETS)
def test_numba_kernel_equals_torch_engine(spikes, mode, net):
    """Same random numbers, same maths: the two engines agree to round-off over a whole run
    (random spikes take the kernel's general path, coordinate spikes its sparse path)."""
    model = _sign_model(spikes)
    a = _run(NETS[net], model, [3, 5, 8], "numba", **MODES[mode])
    b = _run(NETS[net], model, [3, 5, 8], "torch", **MODES[mode])
    np.testing.assert_allclose(a.overlaps, b.overlaps, atol=1e-12)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)
    np.testing.assert_array_equal(a.first_hit, b.first_hit)
    np.testing.assert_array_equal(a.recovered, b.recovered)
    for k in a.params:
        np.testing.assert_allclose(a.params[k].numpy(), b.params[k].numpy(), atol=1e-12)
    assert not np.allclose(a.overlaps[0], a.overlaps[-1])  # the runs did move


@pytest.mark.parametrize("activation", sorted(ACTIVATION_CODES))
@pytest.mark.parametrize("second_layer", ["tied", "untied"])
def test_kernel_gradient_equals_autograd(activation, second_layer):
    """One plain-SGD step of the kernel on a known sample: (w_0 - w_1)/eta equals autograd of the sample loss."""
    K, d, t, eta = 2, 12, 0.4, 1e-3
    act = make_activation(activation, Rademacher(), 5.0, t)
    net = Committee(d=d, K=K, activation=act, second_layer=second_layer, omega=0.5, a_out=1.3)
    gen = torch.Generator().manual_seed(1)
    params = net.init(1, generator=gen, dtype=torch.float64)
    if second_layer == "untied":
        params["o"] = params["o"] + 0.3 * torch.randn(params["o"].shape, generator=gen, dtype=torch.float64)
    x0 = torch.randn((1, 1, d), generator=gen, dtype=torch.float64)
    states = seed_states([11])
    xi = np.empty((1, d))
    fill_normal(states.copy(), xi)  # the kernel draws xi from the same stream
    a, s = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    weight = 0.8
    W = params["w"].numpy().copy()
    O = params["o"].numpy().copy() if second_layer == "untied" else np.zeros((1, 1, 1))
    P = np.eye(3, d)[None]
    par = np.array(matched_coefficients(act) if activation == "matched" else (0.0, 0.0, 0.0))
    tracks = [np.full((1, K, 3, 1), -1, np.int64) for _ in range(3)]
    peak = np.zeros(1)
    run_steps(W, O, states, P, np.full((1, 3), -1, np.int64), np.zeros((1, 4)), np.zeros((1, 1)), np.zeros((1, 1)), x0.numpy()[:, :1],
              np.zeros((1, 1), np.int64), np.array([[[a, s, a, weight]]]), 0, 1, 0, ACTIVATION_CODES[activation], par,
              K ** -0.5, 1.3, second_layer == "tied", False, True, np.array([eta]), np.zeros(1), peak, np.array([0.5]),
              0.5, *tracks)
    x_t = a * x0 + s * torch.from_numpy(xi)[:, None]
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = weight * net.sample_loss(leaves, x0, x_t, t).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    for (name, g), new in zip(zip(leaves, grads), [W, O]):
        moved = (params[name].numpy() - new) / eta
        np.testing.assert_allclose(moved, g.numpy(), rtol=1e-9, atol=1e-11)
    # the divergence rule's peak: the largest norm of a plain-stepped weight vector (w_k, and o_k when untied)
    np.testing.assert_allclose(peak[0], max(np.linalg.norm(W, axis=-1).max(), np.linalg.norm(O, axis=-1).max()),
                               rtol=1e-12)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_fixed_seed_is_bit_identical(sign_model, engine):
    a = _run(NETS["untied-K3"], sign_model, [1, 2], engine)
    b = _run(NETS["untied-K3"], sign_model, [1, 2], engine)
    np.testing.assert_array_equal(a.overlaps, b.overlaps)
    np.testing.assert_array_equal(a.loss, b.loss)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


@pytest.mark.parametrize("mode", ["online", "finite", "random-t-eps"])
def test_ensemble_equals_separate_runs(sign_model, mode):
    """Member e of an E = 4 run is bit-identical to a run with its seed alone, at any position, across chunks."""
    seeds = [21, 4, 9, 13]
    steps = 2600  # crosses a chunk boundary (2048)
    together = _run(NETS["single"], sign_model, seeds, steps=steps, **MODES[mode])
    reordered = _run(NETS["single"], sign_model, seeds[::-1], steps=steps, **MODES[mode])
    for e, seed in enumerate(seeds):
        alone = _run(NETS["single"], sign_model, [seed], steps=steps, **MODES[mode])
        np.testing.assert_array_equal(together.overlaps[:, e], alone.overlaps[:, 0])
        np.testing.assert_array_equal(together.loss[:, e], alone.loss[:, 0])
        np.testing.assert_array_equal(together.first_hit[e], alone.first_hit[0])
        np.testing.assert_array_equal(reordered.overlaps[:, len(seeds) - 1 - e], alone.overlaps[:, 0])


class _CountingModel(MixedCumulantModel):
    """An MCM that records every call to its sampler."""

    calls: list = []

    def sample(self, n, generator=None, dtype=torch.float32, device="cpu", return_latents=False):
        _CountingModel.calls.append(n)
        return super().sample(n, generator, dtype, device, return_latents)


def test_finite_n_reuses_exactly_n_samples():
    n, steps, seeds = 9, 40, [0, 1, 2]
    model = _CountingModel(d=D)
    _CountingModel.calls.clear()
    res = _run(NETS["single"], model, seeds, steps=steps, n_samples=n)
    assert _CountingModel.calls == [n] * len(seeds)  # one training set of n samples per member, drawn once
    counts = res.training_counts
    assert counts.shape == (len(seeds), n) and (counts.sum(1) == steps).all()
    # 4 full passes (each sample once per pass) and 4 steps of a fifth pass
    assert ((counts == 4) | (counts == 5)).all() and ((counts == 5).sum(1) == steps - 4 * n).all()
    _CountingModel.calls.clear()
    _run(NETS["single"], model, seeds, steps=steps)
    assert _CountingModel.calls == []  # online mode draws fresh samples inside the engine


def test_finite_single_sample_is_memorised():
    """Multi-pass SGD on one sample: the neuron aligns with it (the denoiser learns the training point)."""
    model = MixedCumulantModel.create(d=D, beta_u=0.0, beta_v=0.0)
    net = Committee(d=D)
    res = run_online_sgd(net, model, OnlineSGDConfig(steps=3000, delta=2.0, n_samples=1, t=0.3, dtype="float64"), [5])
    gen = torch.Generator().manual_seed(5)  # the member's draws: its initial w, then its training set
    net.init(1, generator=gen, dtype=torch.float64)
    x = model.sample(1, gen, torch.float64)[0]
    w = res.params["w"][0, 0].double()
    fresh = model.sample(200, torch.Generator().manual_seed(99), torch.float64)
    assert abs(float(w @ x / x.norm())) > 0.7  # a random unit vector has overlap ~ d^-1/2 = 0.25
    assert float((fresh @ w).abs().div(fresh.norm(dim=1)).mean()) < 0.3


def test_independent_staircase_learns_u_not_v():
    """Physics smoke test (docs/theory/mcm.md section 7): u recovered within 40 d steps, v stays at O(d^-1/2)."""
    d = 48
    model = MixedCumulantModel.create(d=d)
    res = run_online_sgd(Committee(d=d), model, OnlineSGDConfig(steps=40 * d), list(range(8)))
    final = np.abs(res.overlaps[-1, :, 0, :])
    assert final[:, 0].mean() > 0.7
    assert np.abs(res.overlaps[:, :, 0, 1]).mean(1).max() < 4 / math.sqrt(d)
    assert (res.hits(0.5)[:, 0, 0] > 0).all() and (res.hits(0.5)[:, 0, 1] == -1).all()


def test_first_hit_is_consistent_with_the_records(sign_model):
    res = _run(NETS["tied-K2"], sign_model, [0, 1, 2], steps=600)
    for ti, thr in enumerate(res.thresholds):
        above = np.abs(res.overlaps[1:]) >= thr  # (L-1, E, K, 3); hits are checked after each step
        hit = res.first_hit[..., ti]
        first_logged = np.where(above.any(0), res.log_steps[1:][np.argmax(above, 0)], -1)
        assert ((hit == -1) <= (first_logged == -1)).all()
        ok = (first_logged == -1) | ((hit >= 1) & (hit <= first_logged))
        assert ok.all()


def test_log_steps_cover_the_run():
    steps = log_steps(1000, 20)
    assert steps[0] == 0 and steps[-1] == 1000 and (np.diff(steps) > 0).all()
    assert {1, 2} <= set(steps.tolist())


def test_plain_sgd_divergence_is_reported():
    model = MixedCumulantModel.create(d=D)
    net = Committee(d=D, activation=make_activation("linear"))
    with pytest.raises(DivergenceError, match="diverged"):
        run_online_sgd(net, model, OnlineSGDConfig(steps=500, delta=50.0, spherical=False), [0])


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps"), ({"delta": -1.0}, "delta"), ({"t": 0.0}, "t must"), ({"weighting": "snr"}, "weighting"),
    ({"engine": "jax"}, "engine"), ({"t_range": (0.5, 0.1)}, "t_range"), ({"thresholds": (1.5,)}, "thresholds"),
    ({"n_samples": 0}, "n_samples"), ({"device": "tpu"}, "device"),
])
def test_config_errors_name_the_parameter(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OnlineSGDConfig(**kwargs)


def test_run_input_errors():
    model = MixedCumulantModel.create(d=D)
    with pytest.raises(ConfigError, match="distinct"):
        run_online_sgd(Committee(d=D), model, OnlineSGDConfig(steps=5), [1, 1])
    with pytest.raises(ConfigError, match="does not match"):
        run_online_sgd(Committee(d=D + 1), model, OnlineSGDConfig(steps=5), [1])
    with pytest.raises(ConfigError, match="one per member"):
        run_online_sgd(Committee(d=D), model, OnlineSGDConfig(steps=5, delta=(0.1, 0.2, 0.3)), [1, 2])
    matched_t = Committee(d=D, activation=make_activation("matched", Rademacher(), 5.0, 0.3))
    with pytest.raises(ConfigError, match="numba"):
        run_online_sgd(matched_t, model, OnlineSGDConfig(steps=5, engine="numba", t_range=(0.1, 0.5)), [1])


def test_per_member_step_sizes():
    """A member with a 10x smaller step moves less; per-member etas are delta_e / d."""
    model = MixedCumulantModel.create(d=D)
    res = run_online_sgd(Committee(d=D), model, OnlineSGDConfig(steps=200, delta=(0.5, 0.05)), [0, 1])
    np.testing.assert_allclose(res.etas, [0.5 / D, 0.05 / D])
    alone = run_online_sgd(Committee(d=D), model, OnlineSGDConfig(steps=200, delta=0.05), [1])
    np.testing.assert_array_equal(res.overlaps[:, 1], alone.overlaps[:, 0])


def test_torch_engine_noise_blocks_do_not_change_the_run(monkeypatch, sign_model):
    """Drawing the Gaussians in small blocks (bounded memory at large E d) gives the same run."""
    ref = _run(NETS["single"], sign_model, [3, 5], "torch")
    monkeypatch.setattr(torch_engine, "NOISE_BLOCK", 3 * 2 * 2 * D + 1)  # three steps per block
    blocked = _run(NETS["single"], sign_model, [3, 5], "torch")
    np.testing.assert_array_equal(ref.overlaps, blocked.overlaps)


@pytest.mark.parametrize("mode", ["online", "finite", "random-t-eps"])
def test_graph_block_path_equals_eager_torch(sign_model, mode):
    """The static-buffer block program (what a CUDA graph records) gives the eager torch engine's run bit for bit
    on CPU, with block boundaries that do not divide the record intervals or the chunk."""
    eager = _run(NETS["untied-K3"], sign_model, [2, 7], "torch", steps=2300, **MODES[mode])
    blocks = _run(NETS["untied-K3"], sign_model, [2, 7], "torch", steps=2300, graph_block=7, **MODES[mode])
    np.testing.assert_array_equal(eager.overlaps, blocks.overlaps)
    np.testing.assert_array_equal(eager.loss, blocks.loss)
    np.testing.assert_array_equal(eager.first_hit, blocks.first_hit)
    np.testing.assert_array_equal(eager.recovered, blocks.recovered)


@numba.njit
def _kernel_activation(code, x, par):
    out = np.empty((2, x.size))
    for i in range(x.size):
        out[0, i], out[1, i] = _activation(code, x[i], par[0], par[1], par[2])
    return out


def test_kernel_tanh_is_accurate():
    """The kernel's exp-based tanh: absolute error below 4e-16 everywhere, derivative 1 - tanh^2."""
    x = np.concatenate([np.linspace(-40, 40, 100_001), np.geomspace(1e-300, 2.0, 4001)])
    x = np.concatenate([x, -x, [0.0]])
    s, ds = _kernel_activation(ACTIVATION_CODES["tanh"], x, np.zeros(3))
    np.testing.assert_allclose(s, np.tanh(x), rtol=0, atol=4e-16)
    np.testing.assert_allclose(ds, 1 - np.tanh(x) ** 2, rtol=0, atol=1e-15)
    assert (np.sign(s) == np.sign(x)).all() and np.abs(s).max() <= 1.0


class _Interrupt(Exception):
    pass


def _interrupting(after: int):
    """A progress callback that raises once ``after`` steps are done (a kill at that point)."""
    done = [0]

    def progress(k):
        done[0] += k
        if done[0] >= after:
            raise _Interrupt

    return progress


@pytest.mark.parametrize("engine,mode", [("numba", "online"), ("numba", "finite"), ("torch", "random-t-eps"),
                                         ("reduced", "online")])
def test_interrupted_run_resumes_to_the_same_numbers(sign_model, engine, mode, tmp_path):
    """A run killed mid-way and restarted from its checkpoint ends with the uninterrupted run's numbers."""
    net = NETS["single"] if engine == "reduced" else NETS["untied-K3"]
    data = MixedCumulantModel.create(d=D, beta_u=5.0, beta_v=5.0, beta_m=0.5) if engine == "reduced" else sign_model
    kw = {"steps": 7000, **MODES[mode], **({"engine": engine} if engine == "reduced" else {})}
    cfg = OnlineSGDConfig(dtype="float64", n_logs=12, **({"engine": engine} | kw))
    whole = run_online_sgd(net, data, cfg, [3, 4])
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(_Interrupt):
        run_online_sgd(net, data, cfg, [3, 4], progress=_interrupting(4500), checkpoint=ckpt, checkpoint_every=0)
    assert ckpt.exists()
    resumed = run_online_sgd(net, data, cfg, [3, 4], checkpoint=ckpt)
    assert not ckpt.exists()  # removed once the run is complete
    np.testing.assert_array_equal(whole.overlaps, resumed.overlaps)
    np.testing.assert_array_equal(whole.loss, resumed.loss)
    np.testing.assert_array_equal(whole.recovered, resumed.recovered)
    if whole.training_counts is not None:
        np.testing.assert_array_equal(whole.training_counts, resumed.training_counts)


def test_checkpoint_of_another_run_is_refused(sign_model, tmp_path):
    cfg = OnlineSGDConfig(steps=5000, dtype="float64", n_logs=12)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(_Interrupt):
        run_online_sgd(NETS["single"], sign_model, cfg, [1], progress=_interrupting(3000), checkpoint=ckpt,
                       checkpoint_every=0)
    with pytest.raises(ConfigError, match="different run"):
        run_online_sgd(NETS["single"], sign_model, cfg, [2], checkpoint=ckpt)
