"""The grammar experiment: analysis against constructed records with a planted ordering, one checkpoint's
measurements against the library functions applied by hand, smoke and small full-profile runs, resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from easyhard._io import CorruptedFile
from easyhard._validate import ConfigError
from easyhard.experiments.grammar import (
    RECORDS_FILE, SMOKE, GrammarConfig, analyse, evaluate, make_probe, make_problem, profile, record_shapes,
    run_grammar)
from easyhard.metrics.sequences import hamming_nearest, sequence_kl, symmetric_kl
from easyhard.models.transformer import EnsembleTransformer
from easyhard.train.ensemble import EnsembleTrainConfig



def _bp_stub(config: GrammarConfig) -> dict:
    return {"ce_test": 1.0, "grammatical": 1.0, "data_nn_mean": [2.0] * config.members, "kl_levels": [1, 2],
            "kl_curves": [[0.0, 0.0]]}


def _records(config: GrammarConfig, steps: list[int], split_min: int, d0_min: int, noise: float = 0.02,
             same_rise: float = 0.0) -> list[dict]:
    """Records with known answers: the cross-split KL is a V with its minimum at checkpoint ``split_min``, D_0 a V
    (after a large initial drop) with its minimum at ``d0_min``, both plus N(0, noise^2) per input; the same-split
    KL is flat at 0.1 (+ ``same_rise`` per checkpoint)."""
    rng = np.random.default_rng(0)
    shapes = record_shapes(config)
    n_cross = len(config.cross_pairs())
    records = []
    for c, step in enumerate(steps):
        r = {k: torch.zeros(shape, dtype=torch.float64) for k, shape in shapes.items()}
        d0 = 1.0 + 0.1 * abs(c - d0_min) + (5.0 if c == 0 else 0.0)
        r["D0_units"] = torch.as_tensor(d0 + noise * rng.standard_normal(shapes["D0_units"]))
        r["D_test"][:] = d0
        r["ce_test"][:] = 1.0 + d0
        pair = np.empty(shapes["pair_kl"])
        pair[:, :, :n_cross] = 0.3 + 0.1 * abs(c - split_min)
        pair[:, :, n_cross:] = 0.1 + same_rise * c
        r["pair_kl"] = torch.as_tensor(pair + noise * rng.standard_normal(pair.shape))
        r["nn_div"][:] = 1.0 + abs(c - split_min)
        r["l_tilde_test_se"][:] = 1.0
        records.append({"step": step, **r})
    return records


def test_analysis_recovers_a_planted_ordering_and_refuses_a_coinciding_one():
    config = dataclasses.replace(SMOKE, ns=(16,), seeds=2, splits=3, twins=1, n_test=40, n_boot=200)
    steps = [10 * 2**k for k in range(12)]
    ordered = analyse(config, _records(config, steps, split_min=4, d0_min=9, same_rise=0.0), _bp_stub(config))
    for cell in ordered["cells"]:
        assert (cell["tau_split"], cell["tau_D0"]) == (steps[4], steps[9])
        assert cell["ordering"]["ordered"] and cell["ordering"]["early_z"] > 3 and cell["ordering"]["late_z"] > 3
        assert cell["ordering"]["lead"] == 5
        assert cell["gap_growth"]["z"] > 3  # the same-split floor stays flat
        assert cell["window"] == pytest.approx(np.log10(steps[9] / steps[4]))
        lo, hi = cell["window_interval"]
        assert lo <= cell["window"] <= hi
        assert cell["tau_NN"]["step"] == steps[4]
    assert all(ordered["checks"][k]["passed"] for k in ("split_before_D0", "split_kl_rises", "D0_above_min_at_split",
                                                      "gap_grows"))
    same = analyse(config, _records(config, steps, split_min=7, d0_min=7), _bp_stub(config))
    assert not any(c["ordering"]["ordered"] for c in same["cells"])
    assert not same["checks"]["split_before_D0"]["passed"]
    # the floor rising as fast as the cross-split KL: the gap does not grow
    rising = analyse(config, _records(config, steps, split_min=4, d0_min=9, same_rise=0.1), _bp_stub(config))
    assert not rising["checks"]["gap_grows"]["passed"]


def test_bad_settings_give_one_line_errors():
    for kwargs, name in (({"twins": 5}, "twins"), ({"d_model": 31}, "d_model"), ({"uturn_indices": (0,)}, "uturn"),
                         ({"critical_index": 501}, "critical_index"), ({"norm": "mid"}, "norm"),
                         ({"ns": (32, 16)}, "ns"), ({"gate": 1.0}, "gate"), ({"q_eff": 7}, "q_eff")):
        with pytest.raises(ConfigError, match=name):
            dataclasses.replace(SMOKE, **kwargs)
    with pytest.raises(ConfigError, match="ema_decay"):
        dataclasses.replace(SMOKE, train=EnsembleTrainConfig(steps=50, first=10))


@pytest.fixture(scope="module")
def tiny():
    config = dataclasses.replace(SMOKE, ns=(8,), seeds=1, splits=2, twins=1, n_test=12, samples=8, uturn_inputs=6)
    problem = make_problem(config)
    probe = make_probe(config, problem, config.schedule())
    model = EnsembleTransformer(config.transformer(config.members), torch.Generator().manual_seed(0))
    return config, problem, probe, model


def test_problem_has_disjoint_held_out_data_and_twins_share_their_split(tiny):
    config, problem, probe, _ = tiny
    data, counts = problem.splits.data, problem.splits.counts
    assert counts.tolist() == [8, 8, 8]
    assert torch.equal(data[2], data[0]) and not torch.equal(data[1], data[0])  # twin of split 0
    seen = {tuple(r) for r in data.reshape(-1, config.length).tolist()}
    assert not seen & {tuple(r) for r in problem.test.tolist()}
    assert bool(problem.grammar.is_grammatical(problem.test).all())
    # the fixed inputs are BP's: posteriors sum to one and BP_0 differs from BP_depth
    torch.testing.assert_close(probe.test_bp.sum(-1), torch.ones(probe.test_bp.shape[:-1]))
    assert float((probe.test_bp[0] - probe.test_bp[-1]).abs().max()) > 1e-3


def test_evaluate_equals_the_library_functions_applied_by_hand(tiny):
    config, problem, probe, model = tiny
    out = evaluate(model, config, problem, probe, config.schedule())
    for name, shape in record_shapes(config).items():
        assert tuple(out[name].shape) == shape, name
    with torch.no_grad():
        p = torch.softmax(model.logits(probe.test_xt[None].expand(config.members, -1, -1, -1),
                                       config.critical_index), -1)
    for k in range(config.depth + 1):
        torch.testing.assert_close(out["D_test"][:, k], sequence_kl(probe.test_bp[k], p).mean(-1).double())
    kl01 = symmetric_kl(p[0], p[1]).reshape(config.n_test, config.reps).mean(-1).double()
    kl02 = symmetric_kl(p[0], p[2]).reshape(config.n_test, config.reps).mean(-1).double()
    torch.testing.assert_close(out["pair_kl"][0, 0, 0], kl01)  # the cross-split pair (0, 1)
    torch.testing.assert_close(out["pair_kl"][0, 0, 1], kl02)  # the same-split pair (0, twin)
    assert ((out["grammatical"] >= 0) & (out["grammatical"] <= 1)).all()
    assert torch.isfinite(out["uturn"]).all() and (out["uturn"] > 0).all()
    # the data baseline: held-out sequences' nearest own-split distances
    ref = hamming_nearest(problem.test, problem.splits.data[0, :8])
    torch.testing.assert_close(probe.nn_reference[0], ref)


def test_smoke_run_checks_and_a_rerun_only_reanalyses(tmp_path):
    config = dataclasses.replace(SMOKE, ns=(16,), seeds=1, n_boot=50)
    first = run_grammar(config, tmp_path)
    assert first["bp"]["grammatical"] == 1.0  # G10: BP posterior samples are all grammatical
    assert first["bp"]["ce_test"] < first["model_ce_min"]  # G10: BP's loss below every checkpoint's
    assert len(first["steps"]) == len(config.train.checkpoint_steps())
    again = run_grammar(config, tmp_path)
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(first, sort_keys=True, default=str)
    (tmp_path / RECORDS_FILE).write_bytes(b"garbage")
    with pytest.raises(CorruptedFile, match=RECORDS_FILE):
        run_grammar(config, tmp_path)
    restarted = run_grammar(config, tmp_path, restart=True)
    assert restarted["steps"] == first["steps"]
    np.testing.assert_allclose(restarted["D_test"], first["D_test"], rtol=1e-6)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = dataclasses.replace(SMOKE, ns=(16,), seeds=1, n_boot=50)
    whole = run_grammar(config, tmp_path / "whole")
    short = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=config.train.steps))
    out = tmp_path / "cut"

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def progress(_=1, label=None):
        calls["n"] += 1
        if calls["n"] == 35:  # after the checkpoint at step 32 (checkpoints 10, 16, 25, 39, 60)
            raise Stop

    with pytest.raises(Stop):
        run_grammar(short, out, progress=progress)
    resumed = run_grammar(short, out)
    assert resumed["steps"] == whole["steps"]
    np.testing.assert_allclose(resumed["D_test"], whole["D_test"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(resumed["cross_kl"], whole["cross_kl"], rtol=1e-6, atol=1e-9)


def test_full_profile_runs_at_small_size_on_cpu(tmp_path):
    """The --full settings (depth 4, post-norm transformer with dropout, several n, every U-turn index) with the
    sizes cut down."""
    full = profile("full")
    assert (full.depth, full.norm, full.layers, full.d_model) == (4, "post", 8, 512)
    small = dataclasses.replace(full, ns=(8, 16), seeds=1, n_test=16, reps=1, train_inputs=8, d_model=16, layers=2,
                                ff=32, samples=8, sample_steps=4, uturn_inputs=6, uturn_steps=2, kl_sequences=16,
                                kl_levels=4, n_boot=20, device="cpu",
                                train=dataclasses.replace(full.train, steps=30, batch_size=8, checkpoints=4, first=5,
                                                          lr_warm=10), threads=1)
    result = run_grammar(small, tmp_path)
    assert len(result["cells"]) == 2 and result["bp"]["grammatical"] == 1.0
    assert np.isfinite(np.asarray(result["D_test"])).all()
