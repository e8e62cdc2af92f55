"""Local DP-SGD on the device: equals TensorFlow Privacy's DP-SGD, noise of the right size, accounting."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from common.model.scoring import DENSE_NAMES
from common.model.formula import GroupParams, TrainBatch, candidate_loss, group_logits, trainable_dense
from common.model.training import StepRule, dp_local_train


def _one_user(seed=0, L=6, C=5, R=14, text_dim=5, dim=3, ctx_dim=2):
    rng = np.random.default_rng(seed)
    dense = {
        "tower/kernel": rng.normal(0, 0.5, (1, text_dim, dim)), "tower/bias": rng.normal(0, 0.1, (1, dim)),
        "text-bias/kernel": rng.normal(0, 0.3, (1, text_dim)), "global-bias": np.zeros((1, 1)),
        "context/shift": rng.normal(0, 0.1, (1, ctx_dim)), "context/interaction": rng.normal(0, 0.3, (1, ctx_dim, dim)),
    }
    dense = {k: v.astype(np.float32) for k, v in dense.items()}
    # every example's candidates are distinct rows of the user's R rows
    cand = np.stack([rng.choice(R, C, replace=False) for _ in range(L)])[None].astype(np.int32)
    return dict(
        dense=dense, theta=rng.normal(0, 0.5, (1, dim)).astype(np.float32),
        emb=rng.normal(0, 0.3, (1, R, dim)).astype(np.float32), bias=rng.normal(0, 0.3, (1, R)).astype(np.float32),
        rows_h=rng.normal(0, 1, (1, R, text_dim)).astype(np.float32),
        ctx=rng.normal(0, 1, (1, L, ctx_dim)).astype(np.float32), cand=cand, ex_mask=np.ones((1, L), np.float32))


def _named(u):
    """(GroupParams, TrainBatch) of `_one_user`."""
    return (GroupParams(u["dense"], u["theta"], u["emb"], u["bias"]),
            TrainBatch(rows_h=u["rows_h"], ctx=u["ctx"], cand=u["cand"], ex_mask=u["ex_mask"]))


def test_one_step_equals_tensorflow_privacy_dp_sgd():
    """Our vectorised per-example clipping equals DPKerasSGDOptimizer (jacobian per example, clip, mean)."""
    from tensorflow_privacy import DPKerasSGDOptimizer

    u = _one_user()
    lr, clip, l2, L = 0.5, 0.3, 0.01, u["cand"].shape[1]
    names = list(trainable_dense("softmax"))
    zeros = {k: np.zeros((1, 1) + u["dense"][k].shape[1:], np.float32) for k in names}
    zeros.update({"items/embedding": np.zeros((1, 1) + u["emb"].shape[1:], np.float32),
                  "items/bias": np.zeros((1, 1) + u["bias"].shape[1:], np.float32)})
    rule = StepRule(steps=1, lr=lr, theta_lr=0.1, l2=l2, loss="softmax")
    ours, ours_loss = dp_local_train(*_named(u), rule, zeros, clip=clip, noise_std=0.0,
                                     denominator=L)  # TF Privacy divides by its fixed number of microbatches

    variables = {k: tf.Variable(u["dense"][k]) for k in names}
    emb, bias = tf.Variable(u["emb"]), tf.Variable(u["bias"])
    fixed = {k: tf.constant(v) for k, v in u["dense"].items() if k not in names}
    theta_ex = tf.constant(np.broadcast_to(u["theta"][:, None], (1, L, u["theta"].shape[1])))

    def per_example_loss():
        d = {**fixed, **variables}
        logits = group_logits(d, theta_ex, tf.constant(u["ctx"]), tf.constant(u["rows_h"]), emb, bias,
                              tf.constant(u["cand"]))[0]
        rows_e = tf.gather(emb[0], u["cand"][0])
        rows_b = tf.gather(bias[0], u["cand"][0])
        reg = tf.reduce_sum(tf.square(rows_e), [1, 2]) + tf.reduce_sum(tf.square(rows_b), 1)
        return candidate_loss(logits, "softmax") + l2 * reg  # [L]

    opt = DPKerasSGDOptimizer(l2_norm_clip=clip, noise_multiplier=0.0, num_microbatches=L, learning_rate=lr)
    var_list = [variables[k] for k in names] + [emb, bias]
    # the reported loss is the mean example loss of the (last) step's forward pass
    np.testing.assert_allclose(ours_loss, [per_example_loss().numpy().mean()], rtol=1e-5)
    opt.minimize(per_example_loss, var_list=var_list)
    for k in names:
        np.testing.assert_allclose(ours.dense[k], variables[k].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.rows_emb, emb.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.rows_bias, bias.numpy(), rtol=1e-4, atol=1e-6)
    # the clip was active: without it the step differs
    loose, _ = dp_local_train(*_named(u), rule, zeros, clip=1e6, noise_std=0.0, denominator=L)
    assert not np.allclose(loose.dense["tower/kernel"], ours.dense["tower/kernel"], rtol=1e-3)


def test_noise_has_std_noise_std_times_lr_over_the_public_denominator():
    """With a clip so small the signal vanishes, one step moves each coordinate by lr * z C / B * N(0, 1), with B
    the public denominator, whatever the user's number of examples n (dividing by n would reveal it)."""
    u = _one_user(seed=1, L=4)
    rng = np.random.default_rng(5)
    names = list(trainable_dense("softmax"))
    noise = {k: rng.standard_normal((1, 1) + u["dense"][k].shape[1:]).astype(np.float32) for k in names}
    noise["items/embedding"] = rng.standard_normal((1, 1) + u["emb"].shape[1:]).astype(np.float32)
    noise["items/bias"] = rng.standard_normal((1, 1) + u["bias"].shape[1:]).astype(np.float32)
    lr, std, B = 0.2, 3.0, 7.0  # the user has n = 4 examples
    out, _ = dp_local_train(*_named(u), StepRule(steps=1, lr=lr, theta_lr=0.1, l2=0.0, loss="softmax"), noise,
                            clip=1e-9, noise_std=std, denominator=B)
    for k in names:
        np.testing.assert_allclose(out.dense[k] - u["dense"][k], -lr * std / B * noise[k][0], atol=1e-5)
    np.testing.assert_allclose(out.rows_emb - u["emb"], -lr * std / B * noise["items/embedding"][0], atol=1e-5)
    # theta is trained by plain SGD by default: no noise in it, and it moved
    assert not np.allclose(out.theta, u["theta"])


@pytest.mark.parametrize("z,steps,rounds", [(1.0, 2, 3), (0.7, 5, 10), (2.0, 1, 40)])
def test_local_epsilon_equals_tensorflow_privacy_example_level_accounting(z, steps, rounds):
    """Full-batch DP-SGD, one example per microbatch: TF Privacy's add/remove-one-example epsilon."""
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import _compute_dp_sgd_example_privacy

    from common.privacy.accounting import local_epsilon

    expected = _compute_dp_sgd_example_privacy(num_epochs=steps * rounds, noise_multiplier=z, example_delta=1e-5,
                                               used_microbatching=False, poisson_subsampling_probability=None)
    assert local_epsilon(z, steps, rounds, 1e-5) == pytest.approx(expected, rel=1e-9)


def test_local_report_distribution_over_clients():
    from common.privacy.accounting import local_epsilon
    from common.privacy.statements import local_report

    counts = np.array([0, 1, 1, 2, 5])
    rep = local_report(counts, 1.5, 2, 1e-5, clip_norm=1.0, denominator=16, dp_theta=False)
    eps = [local_epsilon(1.5, 2, int(c), 1e-5) for c in counts]
    assert rep["epsilon"]["max"] == pytest.approx(max(eps)) and rep["epsilon"]["min"] == 0.0
    assert rep["epsilon"]["median"] == pytest.approx(np.median(eps))
    assert eps == sorted(eps)  # more rounds, more privacy loss
    assert rep["unit"] == "example" and rep["clients"] == 5
    # the variant without DP on theta_u states that it has no formal guarantee; the exact one states its epsilon
    assert rep["statement"].startswith("NO formal example-level guarantee") and not rep["exact"]
    exact = local_report(counts, 1.5, 2, 1e-5, clip_norm=1.0, denominator=16, dp_theta=True,
                         warm_starts=counts > 0)
    worst = local_epsilon(1.5, 2, 5, 1e-5, warm_starts=1)
    assert exact["exact"] and exact["epsilon"]["max"] == pytest.approx(worst) and worst > max(eps)
    assert exact["statement"].startswith(f"(ε ≤ {np.ceil(worst * 100) / 100:.2f}, δ = 1e-05) example-level")
    assert "add or remove one engagement" in exact["statement"] and "Not covered" in exact["statement"]


def test_distinct_candidates_are_distinct_and_keep_the_positive():
    from common.federation.updates import distinct_candidates

    rng = np.random.default_rng(0)
    pos = rng.integers(0, 20, 500)
    cand = distinct_candidates(rng, pos, n_items=20, k=12)  # many collisions to resolve
    np.testing.assert_array_equal(cand[:, 0], pos)
    assert all(len(set(row)) == 13 for row in cand.tolist())
    assert cand.min() >= 0 and cand.max() < 20


def test_the_servers_local_bound_counts_every_round_and_every_warm_start():
    """The server states local DP without knowing who took part: a client in all T rounds, plus one DP warm start
    per start of the run (a resumed simulation warms its users up again); without DP on theta_u, no warm start
    is accounted and the statement says there is no formal guarantee."""
    import dp_accounting

    from common.privacy.statements import local_guarantee

    def direct(events):
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.2), events)
        return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)

    once = local_guarantee(1.2, 2, 10, 1e-5, 1.0, "rdp", dp_theta=True, denominator=16)
    resumed = local_guarantee(1.2, 2, 10, 1e-5, 1.0, "rdp", dp_theta=True, denominator=16, warm_starts=2)
    inexact = local_guarantee(1.2, 2, 10, 1e-5, 1.0, "rdp", dp_theta=False, denominator=16, warm_starts=2)
    assert once["epsilon"] == pytest.approx(direct(21), rel=1e-9)
    assert resumed["epsilon"] == pytest.approx(direct(22), rel=1e-9) and "at most 2 Gaussian releases" in resumed["statement"]
    assert inexact["epsilon"] == pytest.approx(direct(20), rel=1e-9) and inexact["statement"].startswith("NO formal")
