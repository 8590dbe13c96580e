"""The sample-split memorisation experiment: analysis against constructed records, one checkpoint's measurements
against the library metrics applied by hand, and a smoke run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from easyhard._io import read_checked_json
from easyhard._validate import ConfigError
from easyhard.diffusion import DDPMSchedule
from easyhard.diffusion.parametrization import x0_to_eps
from easyhard.diffusion.samplers import sample
from easyhard.experiments.memorization import (
    SMOKE, MemorizationConfig, analyse, evaluate, make_probe, make_problem, raw_denoiser, run_memorization)
from easyhard.metrics import (
    denoiser_distance, denoiser_similarity, empirical_distance_per_level, eps_loss_per_level, fixed_noise,
    kl_to_density, mean_log_likelihood, memorization_fraction, nearest_neighbours, paired_similarity, split_similarity)
from easyhard.metrics.ordering import phase_ordering
from easyhard.models.ensemble import EnsembleConfig, EnsembleMLP
from easyhard.oracles.empirical import empirical_denoiser
from easyhard.train.ensemble import EnsembleTrainConfig


def _records(config: MemorizationConfig, steps: list[int], onset: dict[int, int], peak: dict[int, int],
             loss_min: dict[int, int], loss_noise: float = 0.0) -> list[dict]:
    """Records with known answers: member copies jump to 20% at step onset[n]; the cross-split similarity peaks at
    checkpoint peak[n] (0.9, floor 0.1); the test loss is a V with its minimum at checkpoint loss_min[n] (per block
    of test inputs plus N(0, loss_noise^2)); the KL reaches its best at checkpoint 3 + (position of n in ns)."""
    rng = np.random.default_rng(0)
    S, N, K, L, G = config.seeds, len(config.ns), config.splits, config.loss_levels, config.unit_blocks
    P = K * (K - 1) // 2
    records = []
    for c, step in enumerate(steps):
        copies = np.zeros((S, N, K, len(config.thresholds)), dtype=int)
        sim = np.zeros((S, N, P, G))
        loss = np.zeros((S, N, K, L))
        for j, n in enumerate(config.ns):
            copies[:, j] = int(0.2 * config.mem_samples) if step >= onset[n] else 0
            sim[:, j] = 0.9 if c == peak[n] else 0.2
            loss[:, j] = 0.3 + 0.01 * abs(c - loss_min[n]) + (0.5 if c == 0 else 0.0)
        E = S * N * K
        records.append({"step": step, "copies": copies.reshape(E, -1).tolist(), "similarity": sim.tolist(),
                        "floor": np.full(E, 0.1).tolist(), "test_loss": loss.reshape(E, L).tolist(),
                        "test_loss_blocks": (np.repeat(loss[..., :1], G, -1).reshape(E, G)
                                             + loss_noise * rng.standard_normal((E, G))).tolist(),
                        "train_loss": (0.9 * loss).reshape(E, L).tolist(), "emp_distance": np.ones((E, L)).tolist(),
                        "nn_distance": np.ones(E).tolist(), "delta_nn": np.zeros((S, N)).tolist(),
                        "score_train": np.ones((S, N)).tolist(), "score_test": np.ones((S, N)).tolist(),
                        "kl": np.repeat([10.0 - min(c, 3 + j) for j in range(N)], K)[None].repeat(S, 0).ravel().tolist()})
    return records


def test_analysis_recovers_constructed_timescales_and_ordering():
    config = dataclasses.replace(SMOKE, ns=(16, 32, 64), seeds=3, splits=3)
    steps = [10 * 2**k for k in range(12)]  # 10 .. 20480
    onset = {16: 160, 32: 320, 64: 640}  # tau_mem = 10 n exactly: slope 1
    result = analyse(config, _records(config, steps, onset, peak={16: 3, 32: 3, 64: 4},
                                      loss_min={16: 4, 32: 6, 64: 8}))
    fit = result["fits"][str(config.threshold)]
    assert fit["kappa"] == pytest.approx(1.0, abs=1e-12) and list(fit["medians"]) == [160, 320, 640]
    assert result["tau_split"] == [[80, 80, 160]] * 3 and result["tau_loss"] == [[160, 640, 2560]] * 3
    assert result["lead_checkpoints"] == [[1, 3, 4]] * 3
    assert result["slopes"]["tau_loss"] == pytest.approx(2.0) and result["slopes"]["tau_split"] == pytest.approx(0.5)
    assert result["window_slope"] == pytest.approx(1.5)
    # the KL reaches its best at checkpoint 3 + (position of n): tau_gen = 80, 160, 320 = 5 n
    assert result["tau_gen"] == [[[80] * 3, [160] * 3, [320] * 3]] * 3
    assert result["slopes"]["tau_gen"] == pytest.approx(1.0, abs=1e-12)
    checks = result["checks"]
    assert checks["tau_mem_slope"]["passed"] and checks["tau_mem_increasing"]["passed"]
    assert checks["split_peak_before_loss_min"]["passed"] and checks["window_widens"]["passed"]
    np.testing.assert_allclose(checks["split_peak_above_floor"]["value"], [[0.8, 0.8]] * 3)


def test_ordering_checks_are_the_phase_ordering_of_the_unit_curves():
    """The markers, gaps and errors are phase_ordering's on the recorded units (pairs x sample blocks, models x input
    blocks); a loss valley shallower than its bootstrap error fails the loss criterion but not the lead."""
    config = dataclasses.replace(SMOKE, ns=(16, 32, 64), seeds=2, splits=3)
    steps = [10 * 2**k for k in range(12)]
    onset, peak = {16: 160, 32: 320, 64: 640}, {16: 3, 32: 3, 64: 4}
    records = _records(config, steps, onset, peak, loss_min={16: 4, 32: 6, 64: 8}, loss_noise=0.002)
    result = analyse(config, records)
    S, N, K = config.seeds, len(config.ns), config.splits
    loss = np.moveaxis(np.array([r["test_loss_blocks"] for r in records]), 0, -1).reshape(S, N, K, config.unit_blocks, -1)
    similarity = np.moveaxis(np.array([r["similarity"] for r in records]), 0, -1)
    for s in range(S):
        for j in range(N):
            curve = loss[s, j].mean((0, 1))
            eligible = (curve[0] - curve) / (curve[0] - curve.min()) >= config.peak_fraction
            expected = phase_ordering(np.array(steps), similarity[s, j], loss[s, j], True, eligible=eligible,
                                      seed=[config.data_seed, s, j])
            assert result["ordering"][s][j] == expected.to_dict()
            assert expected.late.position == {0: 4, 1: 6, 2: 8}[j] and expected.early.position == peak[config.ns[j]]
    checks = result["checks"]
    assert all(checks[k]["passed"] for k in ("split_peak_before_loss_min", "similarity_falls_after_peak",
                                             "loss_above_min_at_peak"))
    assert checks["split_peak_before_loss_min"]["value"][0][1][0] == 4
    shallow = analyse(config, _records(config, steps, onset, peak, loss_min={16: 4, 32: 6, 64: 8}, loss_noise=0.2))
    gaps = np.array(shallow["checks"]["loss_above_min_at_peak"]["value"])  # (seeds, 2, (gap, SE))
    assert not shallow["checks"]["loss_above_min_at_peak"]["passed"] and (gaps[..., 0] < 3 * gaps[..., 1]).any()


def test_peak_is_searched_only_after_the_loss_has_dropped():
    """A similarity maximum at initialisation (shared noise, untrained models) is not the split peak."""
    config = dataclasses.replace(SMOKE, ns=(16, 32, 64), seeds=1, splits=2)
    steps = [10 * 2**k for k in range(8)]
    records = _records(config, steps, {16: 80, 32: 160, 64: 320}, peak={16: 0, 32: 0, 64: 0},
                       loss_min={16: 5, 32: 5, 64: 5})
    result = analyse(config, records)
    assert all(t > steps[0] for t in result["tau_split"][0])


def test_bad_settings_give_one_line_errors():
    with pytest.raises(ConfigError, match="ns must be increasing"):
        MemorizationConfig(ns=(32, 16))
    with pytest.raises(ConfigError, match="fit_min_n"):
        MemorizationConfig(ns=(8, 16), fit_min_n=16)
    with pytest.raises(ConfigError, match="data cifar10 needs"):
        MemorizationConfig(data="cifar10")
    with pytest.raises(ConfigError, match="threshold"):
        MemorizationConfig(threshold=0.2)


def test_smoke_run_measures_every_checkpoint_and_a_rerun_only_reanalyses(tmp_path):
    result = run_memorization(SMOKE, tmp_path)
    # the run flushes denormals while it trains, and gives the process its default back (subnormals exist)
    assert torch.tensor([1e-40], dtype=torch.float32).item() != 0.0
    records = read_checked_json(tmp_path / "records.json", "memorization-records")
    assert [r["step"] for r in records] == SMOKE.train.checkpoint_steps() == result["steps"]
    assert np.isfinite(np.array(result["test_loss"])).all()
    assert set(result["checks"]) >= {"tau_mem_slope", "split_peak_before_loss_min", "window_widens"}
    state = (tmp_path / "state.pt").stat().st_mtime_ns
    again = run_memorization(SMOKE, tmp_path)
    assert (tmp_path / "state.pt").stat().st_mtime_ns == state and again == result
    other = dataclasses.replace(SMOKE, train=EnsembleTrainConfig(steps=130, checkpoints=5, first=10))
    with pytest.raises(ConfigError, match="another config"):
        run_memorization(other, tmp_path)


def test_image_patch_version_runs_with_a_held_out_quality_measure(tmp_path):
    pytest.importorskip("skimage")
    config = dataclasses.replace(SMOKE, data="patches", patch_size=4, seeds=1, n_test=300)
    result = run_memorization(config, tmp_path)
    assert "exact_distance" not in result and np.isfinite(np.array(result["kl"])).any()
    assert len(result["tau_gen"]) == 1 and np.isfinite(np.array(result["test_loss"])).all()


class _HalfMemorising(torch.nn.Module):
    """An ensemble whose ``memorise`` members are the empirical-optimal denoiser of their (centred) split, so
    their samples copy training points, and whose other members are a freshly initialised network."""

    def __init__(self, net: torch.nn.Module, data: torch.Tensor, counts: torch.Tensor, memorise: torch.Tensor):
        super().__init__()
        self.net, self.data, self.counts, self.memorise = net, data, counts, memorise

    def forward(self, x_t: torch.Tensor, i, schedule: DDPMSchedule) -> torch.Tensor:
        out = self.net(x_t, i, schedule)
        a, s = schedule.coefficients(i)
        for e in torch.nonzero(self.memorise)[:, 0].tolist():
            x0 = empirical_denoiser(x_t[e].double(), self.data[e, :int(self.counts[e])].double(), a, s)
            out[e] = x0_to_eps(x0, x_t[e].double(), a, s).float()
        return out


def test_evaluate_equals_the_library_metrics_applied_by_hand():
    """Every output of one checkpoint, for an ensemble of fresh and memorising members, against easyhard.metrics
    called member by member
    (pair by pair) without the member axis: losses and distances per level through the predictor functions on
    the documented fixed noise (seed 11 for test points, 12 for training points), copies, KL and similarities
    on the same samples."""
    config = dataclasses.replace(SMOKE, ns=(4, 8), fit_min_n=4, seeds=1, splits=3, n_test=120, loss_levels=3,
                                 loss_test=24, loss_train=12, mem_samples=40, split_samples=20, score_inputs=10,
                                 thresholds=(1 / 3, 1 / 2, 0.9), unit_blocks=4)
    schedule = DDPMSchedule(T=config.T)
    problem = make_problem(config)
    probe = make_probe(config, problem, schedule)
    E, d, levels = config.members, config.d, config.loss_indices()
    model = _HalfMemorising(EnsembleMLP(EnsembleConfig(E, d, config.width, config.depth, config.time_dim),
                                        torch.Generator().manual_seed(3)), problem.splits.data - problem.centres,
                            problem.splits.counts, torch.arange(E) < E // 2)
    out = {k: np.array(v) for k, v in evaluate(model, config, problem, probe, schedule, problem.centres).items()}
    eps = raw_denoiser(model, problem.centres, schedule)

    def member(e):  # member e as a plain predictor f(x_t (B, d), i)
        return lambda x_t, i: eps(x_t.expand(E, -1, -1), i)[e]

    split = problem.splits.member
    test0 = problem.test[:config.loss_test]
    for e in range(E):
        np.testing.assert_allclose(out["test_loss"][e], eps_loss_per_level(member(e), test0, schedule, levels, 11),
                                   rtol=1e-5)
        np.testing.assert_allclose(out["emp_distance"][e], empirical_distance_per_level(
            member(e), split(e), test0, schedule, levels, 11), rtol=1e-3, atol=1e-9)  # memorisers: ~0
    # training points: member e's points repeated to loss_train, noise rows e*loss_train.. of one stacked draw
    own = torch.stack([problem.splits.data[e, torch.arange(config.loss_train) % problem.splits.counts[e]]
                       for e in range(E)])
    stacked = lambda x_t, i: eps(x_t.reshape(E, config.loss_train, d), i).reshape(-1, d)  # noqa: E731
    np.testing.assert_allclose(out["train_loss"].mean(0), eps_loss_per_level(
        stacked, own.reshape(-1, d), schedule, levels, 12), rtol=1e-5)
    per_input = np.zeros((E, config.loss_test))  # eps-loss of each test input, averaged over the levels
    for j, i in enumerate(levels):  # the exact denoiser of the data law as the reference
        a, s = schedule.coefficients(i)
        noise = fixed_noise(config.loss_test, d, i, 11)
        x_t = a * test0.double() + s * noise
        eps_hat = eps(x_t.float().expand(E, -1, -1), i).double()
        per_input += ((eps_hat - noise) ** 2).mean(-1).numpy() / len(levels)
        model_x0 = (x_t - s * eps_hat) / a
        np.testing.assert_allclose(out["exact_distance"][:, j], denoiser_distance(
            model_x0, problem.law.posterior_mean(x_t, a, s)), rtol=1e-3)
    # the bootstrap units of the test loss: consecutive blocks of test inputs
    np.testing.assert_allclose(out["test_loss_blocks"], per_input.reshape(E, config.unit_blocks, -1).mean(-1), rtol=1e-5)
    # DDIM samples: copies, nearest distance, KL and log-likelihood
    mem = sample(eps, schedule, (E, config.mem_samples, d), method="ddim", steps=config.mem_steps, heun=False,
                 clip_x0=None, noise=probe.mem_noise)
    for e in range(E):
        for t, k in enumerate(config.thresholds):
            fraction = memorization_fraction(mem[e], split(e), threshold=k, n_boot=10)
            assert out["copies"][e, t] == round(fraction.value * config.mem_samples)
        assert out["nn_distance"][e] == pytest.approx(float(nearest_neighbours(mem[e], split(e), k=1)[0].median()),
                                                      rel=1e-6)
        assert out["kl"][e] == kl_to_density(mem[e].double(), problem.law.log_prob)
        assert out["log_likelihood"][e] == mean_log_likelihood(mem[e].double(), problem.law.log_prob)
    assert (out["copies"][:E // 2, 0] > 0).all()  # the memorising members copy: the counts are tested
    # coupled ancestral samples: floor, cross-split similarity and own- vs other-split gap, per group and pair
    draw = lambda noise: sample(eps, schedule, (E, config.split_samples, d), method="ancestral",  # noqa: E731
                                steps=config.split_steps, clip_x0=None, noise=noise)
    coupled, independent = draw(probe.split_noise), draw(probe.floor_noise)
    for e in range(E):
        assert out["floor"][e] == pytest.approx(float(paired_similarity(coupled[e], independent[e]).mean()), rel=1e-12)
    K = config.splits
    for n_pos in range(len(config.ns)):
        ids = [config.member(0, n_pos, k) for k in range(K)]
        pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
        ordered = [(i, j) for i in range(K) for j in range(K) if i != j]
        np.testing.assert_allclose(out["similarity"][0, n_pos], [  # per pair, per block of samples
            paired_similarity(coupled[ids[i]], coupled[ids[j]]).reshape(config.unit_blocks, -1).mean(-1).tolist()
            for i, j in pairs], rtol=1e-6)
        gaps = [split_similarity(coupled[ids[i]], split(ids[i]), split(ids[j]))["gap"] for i, j in ordered]
        assert out["delta_nn"][0, n_pos] == pytest.approx(np.mean(gaps), rel=1e-6, abs=1e-7)
        on = lambda x: eps(x.expand(E, -1, -1), config.score_index)  # noqa: E731
        train_sim = [denoiser_similarity(on(probe.score_train[ids[i]])[ids[i]], on(probe.score_train[ids[i]])[ids[j]])
                     for i, j in ordered]
        test_sim = [denoiser_similarity(on(probe.score_test)[ids[i]], on(probe.score_test)[ids[j]]) for i, j in ordered]
        assert out["score_train"][0, n_pos] == pytest.approx(np.mean(train_sim), rel=1e-6)
        assert out["score_test"][0, n_pos] == pytest.approx(np.mean(test_sim), rel=1e-6)
