"""Server aggregation and optimisers."""

from __future__ import annotations

import numpy as np
import pytest

from common.federation.aggregation import ServerOptimizer, sum_updates


def test_sum_updates_and_shape_errors():
    a = {"w": np.array([1.0, 2.0]), "b": np.array([1.0])}
    b = {"w": np.array([0.5, -1.0]), "b": np.array([3.0])}
    out = sum_updates([a, b])
    np.testing.assert_allclose(out["w"], [1.5, 1.0])
    np.testing.assert_allclose(out["b"], [4.0])
    with pytest.raises(ValueError, match=r"update of 'w' has shape \(3,\), expected \(2,\)"):
        sum_updates([a, {"w": np.zeros(3), "b": np.zeros(1)}])
    with pytest.raises(ValueError, match=r"updates disagree on parameter names: \['b'\]"):
        sum_updates([a, {"w": np.zeros(2)}])


def test_sgd_is_fedavg():
    opt = ServerOptimizer("sgd", lr=1.0)
    x = {"w": np.array([1.0, 1.0], np.float32)}
    np.testing.assert_allclose(opt.apply(x, {"w": np.array([0.5, -2.0])})["w"], [1.5, -1.0])


def test_adam_first_step_by_hand():
    # step 1: m_hat = d, v_hat = d^2 -> x + lr * d / (|d| + eps) = x + lr * sign(d)
    opt = ServerOptimizer("adam", lr=0.1, eps=1e-12)
    x = {"w": np.zeros(3, np.float32)}
    out = opt.apply(x, {"w": np.array([1e-4, -3.0, 0.0])})
    np.testing.assert_allclose(out["w"], [0.1, -0.1, 0.0], atol=1e-6)
    # a zero update after a positive one keeps moving in the same direction (momentum)
    out2 = opt.apply(out, {"w": np.zeros(3)})
    assert out2["w"][0] > out["w"][0]


def test_cosine_decay_of_the_server_step_size():
    # SGD with a unit update moves x by exactly the step size of each round: lr at round 1, lr * f at round T,
    # lr * (1 + f) / 2 half-way (T = 5, round 3), and lr * f after T
    opt = ServerOptimizer("sgd", lr=1.0, total_steps=5, final_fraction=0.2)
    x = {"w": np.zeros(1, np.float32)}
    moves = []
    for _ in range(6):
        new = opt.apply(x, {"w": np.ones(1)})
        moves.append(float(new["w"][0] - x["w"][0]))
        x = new
    expected = [0.2 + 0.8 * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(5)] + [0.2]
    np.testing.assert_allclose(moves, expected, rtol=1e-6)
    assert moves[2] == pytest.approx(0.6) and moves[0] == pytest.approx(1.0) and moves[4] == pytest.approx(0.2)
    # final_fraction = 1 (the default) is a constant step
    const = ServerOptimizer("sgd", lr=0.5, total_steps=5)
    assert [const.current_lr() for const.step in range(1, 7)] == [0.5] * 6


def test_item_decay_shrinks_only_the_named_parameters_once_per_step():
    # SGD, zero update: x_t = x_0 (1 - lr w)^t for the decayed table, unchanged elsewhere
    from common.federation.aggregation import item_decay
    from common.config import Config

    decay = item_decay(Config(item_decay=0.5))
    assert decay == {"items/embedding": 0.5, "items/bias": 0.5}
    assert item_decay(Config(item_decay=0.5, item_embedding=False)) == {} and item_decay(Config()) == {}
    opt = ServerOptimizer("sgd", lr=0.1, decay=decay)
    x = {"items/embedding": np.full((2, 3), 2.0, np.float32), "tower/bias": np.ones(3, np.float32)}
    for _ in range(3):
        x = opt.apply(x, {k: np.zeros_like(v) for k, v in x.items()})
    np.testing.assert_allclose(x["items/embedding"], 2.0 * 0.95 ** 3, rtol=1e-6)
    np.testing.assert_array_equal(x["tower/bias"], 1.0)
    # with an update: the shrink comes before the step, x <- x (1 - lr w) + lr d
    out = ServerOptimizer("sgd", lr=0.1, decay=decay).apply({"items/bias": np.array([1.0], np.float32)},
                                                         {"items/bias": np.array([2.0])})
    assert float(out["items/bias"][0]) == pytest.approx(0.95 + 0.2)


def test_server_item_lr_steps_the_item_tables_by_the_sum_of_user_updates():
    # Adam elsewhere; the item rows move by a * (sum of the users' updates): a row touched by 3 users moves
    # 3 times as far as a row touched by one, where Adam's normalised step would move both about equally
    from common.federation.aggregation import item_sgd_lr
    from common.config import Config

    assert item_sgd_lr(Config(server_item_lr=2.0)) == {"items/embedding": 2.0, "items/bias": 2.0}
    assert item_sgd_lr(Config(server_item_lr=0.0)) == {}
    assert item_sgd_lr(Config(server_item_lr=2.0, item_embedding=False)) == {}
    users = 10
    per_user = np.zeros((users, 2))
    per_user[:3, 0] = 0.01  # item 0: three users, item 1: one user
    per_user[3, 1] = 0.01
    mean = {"items/bias": per_user.sum(0) / users, "tower/bias": np.full(2, 0.001)}
    x = {"items/bias": np.zeros(2, np.float32), "tower/bias": np.zeros(2, np.float32)}
    out = ServerOptimizer("adam", lr=0.05, sgd_lr=item_sgd_lr(Config(server_item_lr=2.0))).apply(x, mean, users)
    np.testing.assert_allclose(out["items/bias"], [2.0 * 0.03, 2.0 * 0.01], rtol=1e-5)
    # the dense parameter took Adam's first step: lr * sign, independent of the update's size
    np.testing.assert_allclose(out["tower/bias"], 0.05, rtol=1e-4)
    plain = ServerOptimizer("adam", lr=0.05).apply(x, mean, users)
    np.testing.assert_allclose(plain["items/bias"], [0.05, 0.05], rtol=1e-4)  # what the item rows get without it
    # the cosine decay of the server step scales the item step too
    decayed = ServerOptimizer("adam", lr=0.05, total_steps=2, final_fraction=0.5, step=1, sgd_lr={"items/bias": 2.0})
    np.testing.assert_allclose(decayed.apply(x, mean, users)["items/bias"], [0.03, 0.01], rtol=1e-5)


def test_server_item_lr_auto_is_plain_steps_for_softmax_without_dp_and_adam_otherwise():
    # -1 (the default): plain item steps only where no noise is added to the update sum; an explicit value wins
    from common.federation.aggregation import item_sgd_lr
    from common.config import AUTO_ITEM_LR, Config

    assert Config().server_item_lr == -1 and Config().item_lr == AUTO_ITEM_LR > 0
    assert item_sgd_lr(Config()) == {"items/embedding": AUTO_ITEM_LR, "items/bias": AUTO_ITEM_LR}
    for mode in ("central", "local"):
        assert Config(privacy=mode).item_lr == 0.0 and item_sgd_lr(Config(privacy=mode)) == {}
    for loss in ("ials", "bce"):  # ials: every user's update reaches every row; bce: not measured
        assert Config(loss=loss).item_lr == 0.0
    assert Config(privacy="central", server_item_lr=3.0).item_lr == 3.0
    with pytest.raises(ValueError, match="server-item-lr"):
        Config(server_item_lr=-0.5)


def test_server_lr_warmup_ramps_the_step_linearly_then_follows_the_cosine():
    # W = 4 rounds of ramp on a cosine over T = 10: lr_t = lr * min(1, t / W) * cosine(t)
    def lr_at(t, **kw):
        return ServerOptimizer("adam", lr=0.1, step=t, **kw).current_lr()

    for t in range(1, 11):
        cosine = lr_at(t, total_steps=10, final_fraction=0.2)
        np.testing.assert_allclose(lr_at(t, total_steps=10, final_fraction=0.2, warmup_steps=4),
                                   cosine * min(1.0, t / 4), rtol=1e-12)
    assert lr_at(1, warmup_steps=4) == 0.025 and lr_at(4, warmup_steps=4) == lr_at(9, warmup_steps=4) == 0.1
