"""Tests for common.privacy: clipping, secure noise, DP-FedAvg accounting and the ledger."""

from __future__ import annotations

import csv
import dataclasses
import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from common.privacy.ledger import PrivacyLedger, RoundRecord
from common.privacy.noise import SecureGaussian, clip_factors, noisy_mean
from common.privacy.accounting import calibrate_noise, dp_event, epsilon_for, max_rounds

DELTA = 1e-5

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


# ---------------------------------------------------------------------------------------------
# Clipping

@settings(max_examples=60, deadline=None)
@given(
    updates=st.integers(1, 8).flatmap(
        lambda u: st.integers(1, 16).flatmap(lambda d: arrays(np.float64, (u, d), elements=finite))),
    clip=st.floats(1e-3, 1e3),
)
def test_clipped_norm_at_most_C_and_unchanged_within(updates, clip):
    norms = np.linalg.norm(updates, axis=1)
    f = clip_factors(norms, clip)
    assert f.shape == norms.shape and f.dtype == np.float64
    assert np.all((f > 0) & (f <= 1))
    clipped = updates * f[:, None]
    assert np.all(np.linalg.norm(clipped, axis=1) <= clip * (1 + 1e-6))
    within = norms <= clip
    assert np.all(f[within] == 1.0)
    np.testing.assert_array_equal(clipped[within], updates[within])


def test_clip_factors_zero_norm_and_errors():
    np.testing.assert_array_equal(clip_factors(np.array([0.0, 0.5, 4.0]), 1.0), [1.0, 1.0, 0.25])
    with pytest.raises(ValueError, match=r"Clip norm must be positive.*Found 0"):
        clip_factors(np.array([1.0]), 0.0)
    with pytest.raises(ValueError, match="Found -1"):
        clip_factors(np.array([-1.0]), 1.0)
    with pytest.raises(ValueError, match="Found nan"):
        clip_factors(np.array([np.nan]), 1.0)


# ---------------------------------------------------------------------------------------------
# noisy_mean

@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.floats(-1e3, 1e3, width=32)),
    b=arrays(np.float64, st.integers(1, 7), elements=finite),
    denominator=st.floats(0.1, 1e4),
)
def test_noisy_mean_without_noise_is_sum_over_denominator(a, b, denominator):
    total = {"a": a, "b": b}
    out = noisy_mean(total, clip_norm=1e12, noise_multiplier=0.0, denominator=denominator,
                     noise=SecureGaussian(0))
    assert set(out) == {"a", "b"}
    for k, v in total.items():
        assert out[k].shape == v.shape and out[k].dtype == np.float64
        np.testing.assert_array_equal(out[k], v.astype(np.float64) / denominator)


def test_noisy_mean_noise_std_matches_zC_over_denominator():
    z, C, denom = 1.3, 0.7, 25.0
    total = {"w": np.zeros((200, 250)), "b": np.full(100, 3.0)}
    out = noisy_mean(total, C, z, denom, SecureGaussian(seed=1234))
    noise = np.concatenate([out["w"].ravel(), out["b"].ravel() - 3.0 / denom])   # 50,100 samples
    expected = z * C / denom
    assert abs(noise.std() / expected - 1) < 0.03
    assert abs(noise.mean()) < 4 * expected / math.sqrt(noise.size)


def test_noisy_mean_rejects_bad_arguments():
    g = SecureGaussian(0)
    with pytest.raises(ValueError, match="Noise multiplier must be non-negative.*Found -0.5"):
        noisy_mean({"a": np.zeros(2)}, 1.0, -0.5, 1.0, g)
    with pytest.raises(ValueError, match="Clip norm must be positive.*Found -1"):
        noisy_mean({"a": np.zeros(2)}, -1.0, 1.0, 1.0, g)
    with pytest.raises(ValueError, match="Denominator must be positive.*Found 0"):
        noisy_mean({"a": np.zeros(2)}, 1.0, 1.0, 0.0, g)


# ---------------------------------------------------------------------------------------------
# SecureGaussian

def test_secure_gaussian_standard_normal_and_not_reproducible(monkeypatch):
    """The production path (AES-256-CTR keystream, Box-Muller) under fixed os.urandom bytes, so that the
    statistical checks are the same sample on every run (live entropy would fail them 1.5e-4 of the time); then
    with the real os.urandom, two draws differ."""
    import common.privacy.noise as privacy
    from scipy import stats

    fixed = np.random.default_rng(2024)
    monkeypatch.setattr(privacy.os, "urandom", lambda n: fixed.bytes(n))
    a = SecureGaussian(None).normal(1.0, (2_000_000,))
    monkeypatch.undo()
    b = SecureGaussian(None).normal(1.0, (200_000,))
    assert a.dtype == np.float32 and a.shape == (2_000_000,)
    assert abs(a.mean()) < 0.0032        # 4.5 standard errors
    assert abs(a.std() - 1) < 0.0023
    # the whole distribution is N(0, 1) (Kolmogorov-Smirnov), and so are the tails the noise relies on:
    # P(|z| > 2) = 4.55 %, P(|z| > 4) = 6.33e-5 (127 of 2M, sd 11)
    assert stats.kstest(a.astype(np.float64), "norm").pvalue > 1e-4
    assert abs(np.mean(np.abs(a) > 2) - 0.0455) < 0.0007
    assert 80 < np.sum(np.abs(a) > 4) < 175
    assert not np.array_equal(a[:200_000], b)
    assert SecureGaussian().normal(2.0, (3, 5, 1)).shape == (3, 5, 1)
    assert SecureGaussian().normal(1.0, (7,)).shape == (7,)   # odd count (Box-Muller pairs)
    assert SecureGaussian().normal(1.0, (0, 4)).shape == (0, 4)


def test_seeded_gaussian_is_deterministic_test_only():
    np.testing.assert_array_equal(SecureGaussian(7).normal(2.0, (4,)), SecureGaussian(7).normal(2.0, (4,)))
    assert SecureGaussian(7).secure is False and SecureGaussian().secure is True
    with pytest.raises(ValueError, match=r"Standard deviation must be non-negative and finite. Found -1.0."):
        SecureGaussian(0).normal(-1.0, (2,))


# ---------------------------------------------------------------------------------------------
# Accounting

@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_matches_independent_dp_accounting(accountant):
    q, z, rounds = 0.01, 1.1, 100
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    expected = acc.compose(event).get_epsilon(DELTA)
    assert epsilon_for(q, z, rounds, DELTA, accountant) == pytest.approx(expected, rel=1e-12)
    # reference values (dp-accounting 0.4.3)
    assert expected == pytest.approx({"rdp": 0.956, "pld": 0.550}[accountant], abs=5e-3)


def test_full_participation_is_plain_gaussian_and_edge_cases():
    ev = dp_event(1.0, 2.0, 5)
    assert ev == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 5)
    expected = dp_accounting.rdp.RdpAccountant().compose(ev).get_epsilon(DELTA)
    assert epsilon_for(1.0, 2.0, 5, DELTA) == pytest.approx(expected)
    assert epsilon_for(0.1, 0.0, 3, DELTA) == math.inf
    assert epsilon_for(0.1, 1.0, 0, DELTA) == 0.0
    assert epsilon_for(0.0, 1.0, 3, DELTA) == 0.0


def test_accounting_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"Sampling rate must be in \[0, 1\]. Found 1.3."):
        epsilon_for(1.3, 1.0, 1, DELTA)
    with pytest.raises(ValueError, match="Noise multiplier must be non-negative.*Found -1"):
        epsilon_for(0.1, -1.0, 1, DELTA)
    for d in (0.0, 1.0, -1e-5):
        with pytest.raises(ValueError, match=r"Delta must be in \(0, 1\). Found"):
            epsilon_for(0.1, 1.0, 1, d)
    with pytest.raises(ValueError, match="Target epsilon must be positive.*Found 0"):
        calibrate_noise(0.0, 0.1, 10, DELTA)
    with pytest.raises(ValueError, match="Target epsilon must be positive.*Found -2"):
        max_rounds(-2.0, 0.1, 1.0, DELTA)
    with pytest.raises(ValueError, match="Accountant must be one of"):
        epsilon_for(0.1, 1.0, 1, DELTA, "moments")
    with pytest.raises(ValueError, match="Delta must be in"):
        PrivacyLedger(delta=2.0)


@settings(max_examples=15, deadline=None)
@given(target=st.floats(0.5, 8.0), q=st.floats(0.01, 0.2), rounds=st.integers(1, 50))
def test_calibrate_never_overshoots_and_epsilon_grows_with_rounds(target, q, rounds):
    z = calibrate_noise(target, q, rounds, DELTA)
    eps = epsilon_for(q, z, rounds, DELTA)
    assert 0 < z and eps <= target
    assert epsilon_for(q, z, rounds + 1, DELTA) > eps          # monotone in rounds


@pytest.mark.parametrize("accountant,target,q,rounds", [("rdp", 0.5, 0.2, 50), ("rdp", 4.0, 0.05, 5),
                                                         ("pld", 0.3, 0.05, 10)])
def test_calibrate_noise_is_minimal_within_tolerance(accountant, target, q, rounds):
    z = calibrate_noise(target, q, rounds, DELTA, accountant)
    # never overshoots; a 0.15 % smaller z (beyond the 1e-3 relative tolerance) does
    assert epsilon_for(q, z, rounds, DELTA, accountant) <= target
    assert epsilon_for(q, z * (1 - 1.5e-3), rounds, DELTA, accountant) > target


def test_pld_is_tighter_than_rdp():
    assert calibrate_noise(0.3, 0.05, 10, DELTA, "pld") < calibrate_noise(0.3, 0.05, 10, DELTA, "rdp")


@pytest.mark.parametrize("target,q,z,accountant", [(1.0, 0.01, 1.1, "rdp"), (3.0, 0.05, 1.5, "rdp"),
                                                   (4.0, 0.1, 2.0, "rdp"), (0.5, 0.05, 3.0, "pld")])
def test_max_rounds_is_the_last_round_within_budget(target, q, z, accountant):
    t = max_rounds(target, q, z, DELTA, accountant)
    assert t >= 1
    assert epsilon_for(q, z, t, DELTA, accountant) <= target < epsilon_for(q, z, t + 1, DELTA, accountant)


def test_max_rounds_edges():
    assert max_rounds(0.1, 0.5, 0.5, DELTA) == 0                 # one round already exceeds
    assert max_rounds(1.0, 0.01, 5.0, DELTA, limit=50) == 50      # capped at limit
    assert max_rounds(1.0, 0.1, 0.0, DELTA) == 0                 # no noise


# ---------------------------------------------------------------------------------------------
# Ledger

@pytest.mark.parametrize("accountant,n", [("rdp", 12), ("pld", 4)])
def test_ledger_appends_equal_one_composed_event(accountant, n):
    q, z = 0.05, 2.0
    ledger = PrivacyLedger(delta=DELTA, accountant=accountant)
    assert ledger.epsilon() == 0.0
    before = ledger.epsilon_after(q, z, n)
    for r in range(1, n + 1):
        rec = ledger.append(r, q, z, 1.0)
        assert isinstance(rec, RoundRecord) and rec.round == r
    assert ledger.epsilon() == pytest.approx(epsilon_for(q, z, n, DELTA, accountant), rel=1e-9)
    assert ledger.epsilon() == pytest.approx(before, rel=1e-9)
    assert ledger.records[-1].epsilon == pytest.approx(ledger.epsilon(), rel=1e-9)
    eps = [rec.epsilon for rec in ledger.records]
    assert all(a <= b for a, b in zip(eps, eps[1:]))
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'epsilon'"):
        ledger.records[0].epsilon = 0.0                          # frozen entries
    assert ledger.records[0].epsilon == eps[0]


def test_ledger_mixed_rounds_and_csv(tmp_path):
    ledger = PrivacyLedger(delta=DELTA)
    ledger.append(1, 0.1, 2.0, 1.0)
    ledger.append(2, 0.1, 2.0, 1.0)
    ledger.append(3, 0.2, 3.0, 0.5)
    expected = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.ComposedDpEvent([
        dp_event(0.1, 2.0, 2), dp_event(0.2, 3.0, 1)])).get_epsilon(DELTA)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-12)
    assert ledger.epsilon_after(0.1, 2.0, 0) == ledger.epsilon()
    assert ledger.epsilon_after(0.1, 2.0, 5) > ledger.epsilon()
    with pytest.raises(ValueError, match="Round must be greater"):
        ledger.append(3, 0.1, 2.0, 1.0)
    rows = ledger.to_rows()
    assert [r["round"] for r in rows] == [1, 2, 3] and rows[2]["clip_norm"] == 0.5
    path = tmp_path / "ledger.csv"
    ledger.write_csv(path)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    # the ledger is released: only public or DP-released values, never a count of sampled users
    assert list(read[0]) == ["round", "sample_rate", "noise_multiplier", "clip_norm", "epsilon"]
    assert float(read[-1]["epsilon"]) == pytest.approx(ledger.epsilon())


def test_statement_names_epsilon_delta_level_and_accountant():
    ledger = PrivacyLedger(delta=DELTA)
    assert "no DP-FedAvg rounds recorded" in ledger.statement()
    for r in range(1, 4):
        ledger.append(r, 0.1, 1.1, 1.0)
    s = ledger.statement()
    eps = ledger.epsilon()
    assert f"(ε = {math.ceil(eps * 100) / 100:.2f}, δ = 1e-05) user-level differential privacy" in s  # rounded up
    assert "over 3 rounds of DP-FedAvg with Poisson sampling (q = 0.1)" in s
    assert "noise multiplier 1.1, clip norm 1.0, RDP accountant (dp-accounting)." in s
    assert "example-level" in ledger.statement(unit="example")
    pld = PrivacyLedger(delta=DELTA, accountant="pld")
    pld.append(1, 0.1, 3.0, 1.0)
    pld.append(2, 0.2, 3.0, 0.5)
    s = pld.statement()
    assert "PLD accountant" in s and "1 round" not in s and "q = 0.1 to 0.2" in s and "clip norm 0.5 to 1.0" in s
    ledger.append(4, 0.1, 0.0, 1.0)
    assert ledger.epsilon() == math.inf and "No finite" in ledger.statement()


# -- adaptive clipping ------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.floats(0.05, 5.0), st.floats(0.01, 100.0))
def test_adaptive_split_accounts_as_one_gaussian(z, extra):
    from common.privacy.noise import adaptive_sum_noise

    sigma_b = z / 2 * (1 + extra)  # any count noise above z / 2
    z_sum = adaptive_sum_noise(z, sigma_b)
    assert z_sum >= z
    assert z_sum ** -2 + (2 * sigma_b) ** -2 == pytest.approx(z ** -2, rel=1e-9)


def test_adaptive_split_rejects_too_little_count_noise():
    from common.privacy.noise import adaptive_sum_noise

    with pytest.raises(ValueError, match="clip-count-stddev"):
        adaptive_sum_noise(2.0, 0.9)


def test_clip_update_equals_tensorflow_privacy_quantile_estimator():
    """Same C after one round as TF Privacy's QuantileEstimatorQuery (noise 0, geometric update)."""
    import tensorflow as tf
    from tensorflow_privacy.privacy.dp_query.quantile_estimator_query import QuantileEstimatorQuery

    from common.privacy.noise import next_clip_norm

    norms = np.array([0.1, 0.5, 0.7, 1.2, 3.0, 0.05, 0.9])
    C, quantile, lr, expected = 0.8, 0.5, 0.2, 10.0
    query = QuantileEstimatorQuery(initial_estimate=C, target_quantile=quantile, learning_rate=lr,
                                   below_estimate_stddev=0.0, expected_num_records=expected, geometric_update=True)
    state = query.initial_global_state()
    params = query.derive_sample_params(state)
    sample = query.initial_sample_state()
    for n in norms:
        sample = query.accumulate_record(params, sample, tf.constant(n, tf.float32))
    expected_c, _, _ = query.get_noised_result(sample, state)
    shifted = float((norms <= C).sum() - 0.5 * len(norms))
    ours, below = next_clip_norm(C, shifted, 0.0, expected, quantile, lr)
    assert ours == pytest.approx(float(expected_c), rel=1e-6)
    assert below == pytest.approx((norms <= C).sum() / expected - 0.5 * len(norms) / expected + 0.5)


# -- secret sampling ------------------------------------------------------------------------------------

SAMPLING_NODES = (11, 12, 13)


def _sampling_strategy(key, num_rounds: int = 4, **kw):
    """A UserFedAvg around `key` at q = 1/2 (a one-item public schema), as server.app.run_federated builds it."""
    from flwr.app import ArrayRecord

    from common.federation.aggregation import ServerOptimizer
    from common.data.context import ContextEncoder
    from common.data.schema import build_schema
    from server.strategy import UserFedAvg

    schema = build_schema(["a"], ContextEncoder([], []), {"encoder": "test"}, np.zeros((1, 2), np.float32))
    return UserFedAvg(content=ArrayRecord(), schema=schema, optimizer=ServerOptimizer("adam", 0.1),
                      sample_rate=0.5, sampling_key=key, eval_every=1, num_rounds=num_rounds, **kw)


def _sent_configs(strategy, rounds, nodes=SAMPLING_NODES) -> dict[tuple[int, int], dict]:
    """{(run round, node id): the config of the train message the strategy sends that node}; a hand-made grid of
    `nodes`, Flower's round numbers `rounds` (the run's are these plus the strategy's round_offset)."""
    from flwr.app import ConfigRecord

    from common.federation.params import to_record

    class Grid:
        def get_node_ids(self):
            return list(nodes)

    out = {}
    for r in rounds:
        for m in strategy.configure_train(r, to_record({"w": np.zeros(2, np.float32)}), ConfigRecord({}), Grid()):
            config = dict(m.content.config_records["config"])
            out[(int(config["server-round"]), m.metadata.dst_node_id)] = config
    return out


def _sent_seeds(strategy, rounds) -> dict[tuple[int, int], int]:
    """{(run round, node id): the sampling seed the strategy sends that node} (see _sent_configs)."""
    return {k: int(c["sampling-seed"]) for k, c in _sent_configs(strategy, rounds).items()}


def test_sampling_key_is_fresh_secret_and_never_printed(monkeypatch):
    """The key a run draws (SamplingKey.fresh(), as server.app.run_federated does) is new for every run: two runs'
    strategies send their nodes other seeds in every round. A run resumed after round 2's checkpoint, with round 3
    begun before the interruption, samples the replayed round 3 afresh (another start, other seeds) and round 4 as
    the first run would. The key appears in no message and not in its repr. The test-only key of the environment
    gives repeatable runs (one seed a round, the same for every node) and says so."""
    from common.privacy.sampling import SAMPLING_KEY_ENV, SamplingKey

    monkeypatch.delenv(SAMPLING_KEY_ENV, raising=False)
    a, b = SamplingKey.fresh(), SamplingKey.fresh()
    assert a.secret and b.secret and a.hex() not in repr(a) and "secret" in repr(a)
    first = _sent_seeds(_sampling_strategy(a), (1, 2, 3, 4))
    other_run = _sent_seeds(_sampling_strategy(b), (1, 2, 3, 4))
    assert len(first) == 12 and first.keys() == other_run.keys()
    assert all(first[k] != other_run[k] for k in first)
    assert all(0 <= s < 2 ** 63 for s in first.values())  # Flower's int64 config values
    resumed = {start: _sent_seeds(_sampling_strategy(a, round_offset=2, replayed_until=3, attempt=start), (1, 2))
               for start in (2, 3)}  # server.app passes attempt = the run's start count
    for seeds in resumed.values():
        assert sorted(seeds) == [(r, n) for r in (3, 4) for n in SAMPLING_NODES]
        assert all(seeds[(3, n)] != first[(3, n)] for n in SAMPLING_NODES)  # the replayed round: a fresh sample
        assert len({seeds[(3, n)] for n in SAMPLING_NODES}) == 3  # still each node its own seed
        assert all(seeds[(4, n)] == first[(4, n)] for n in SAMPLING_NODES)  # then as the uninterrupted run
    assert all(resumed[2][(3, n)] != resumed[3][(3, n)] for n in SAMPLING_NODES)  # every start its own sample
    assert a.hex() not in repr(_sent_configs(_sampling_strategy(a), (1, 2)))
    monkeypatch.setenv(SAMPLING_KEY_ENV, "tests")
    fixed, again = SamplingKey.fresh(), SamplingKey.fresh()
    assert not fixed.secret and "TEST ONLY" in repr(fixed)
    repeat = _sent_seeds(_sampling_strategy(fixed), (1, 2, 3, 4))
    assert repeat == _sent_seeds(_sampling_strategy(again), (1, 2, 3, 4))
    assert all(len({repeat[(r, n)] for n in SAMPLING_NODES}) == 1 for r in (1, 2, 3, 4))


def test_the_server_sends_each_round_its_own_secret_sampling_seed():
    """Round r's config carries key.round_seed(r), never the run's public seed; two runs with the same settings
    (other keys) sample with other seeds."""
    from common.privacy.sampling import SamplingKey

    def seeds(key):
        sent = _sent_seeds(_sampling_strategy(key, num_rounds=3), (1, 2, 3))
        assert sorted(sent) == [(r, n) for r in (1, 2, 3) for n in SAMPLING_NODES]
        out = []
        for r in (1, 2, 3):
            got = {n: sent[(r, n)] for n in SAMPLING_NODES}
            assert got == {n: key.round_seed(r, 0, n) for n in SAMPLING_NODES}  # each node its own seed
            assert len(set(got.values())) == 3 and key.round_seed(r) not in got.values()
            out.extend(sorted(got.values()))
        return out

    a, b = SamplingKey.fresh(), SamplingKey.fresh()
    assert seeds(a) != seeds(b) and len(set(seeds(a))) == 9 and 0 not in seeds(a)


def test_a_node_cannot_compute_another_nodes_users_sampling():
    """With a secret key each node receives only its own seed, a keyed PRF of (round, node id): the seeds of
    one node over many rounds carry nothing about another's (no seed appears in another node's messages, and
    another node's users' sample computed with one's own seed agrees with the true one only at the rate of two
    independent samples). The simulation property that changes: with a secret key, a user's sample depends on
    the node holding it; with the test-only key every node gets the round's common seed."""
    from common.privacy.sampling import poisson_sample
    from common.privacy.sampling import SamplingKey

    q, rounds = 0.5, 200
    users_b = np.array([f"u{i:06d}" for i in range(50, 100)])  # node 12's users (sequential, guessable ids)
    for key in (SamplingKey.fresh(), SamplingKey(b"t" * 32, secret=False)):
        sent = _sent_configs(_sampling_strategy(key, num_rounds=rounds), range(1, rounds + 1), nodes=(11, 12))
        agree, texts = [], {11: [], 12: []}
        for r in range(1, rounds + 1):
            seed = {n: int(sent[(r, n)]["sampling-seed"]) for n in (11, 12)}
            for n in (11, 12):
                texts[n].append(repr(sent[(r, n)]))
            truth = poisson_sample(users_b, q, seed[12], r)  # what node 12 trains
            agree.append(np.mean(poisson_sample(users_b, q, seed[11], r) == truth))  # node 11's best guess
            if key.secret:
                assert str(seed[12]) not in " ".join(texts[11]) and str(seed[11]) not in " ".join(texts[12])
        if key.secret:  # independent samples at q = 1/2 agree on half the users: 0.5 +- 4 sd of the mean
            assert abs(np.mean(agree) - 0.5) < 4 * 0.5 / np.sqrt(len(users_b) * rounds)
        else:
            assert np.mean(agree) == 1.0  # the test-only key: one public seed a round


# -- DP warm start of theta_u (exact local DP) ---------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.integers(1, 6), st.floats(0.05, 5.0), st.integers(0, 10_000))
def test_dp_warm_start_moves_at_most_the_clip_norm_per_engagement(n, dim, clip, seed):
    """Adding one engagement (any phi, however large) moves the released vector by <= clip: Gaussian(z) holds."""
    from common.model.training import dp_warm_start_sum

    rng = np.random.default_rng(seed)
    phi = rng.normal(0, rng.uniform(0.01, 100), (n + 1, dim))
    change = dp_warm_start_sum(phi, clip) - dp_warm_start_sum(phi[:-1], clip)
    assert np.linalg.norm(change) <= clip * (1 + 1e-9)


def test_dp_warm_start_without_noise_is_the_mean_of_the_clipped_vectors():
    from common.model.training import dp_warm_start_theta

    phi = np.array([[3.0, 4.0], [0.1, 0.0], [0.0, -0.2]])
    a = 1.0 / np.sqrt(2)  # clip 1: each vector is clipped to norm 1/sqrt(2)
    expected = (np.array([3.0, 4.0]) / 5.0 * a + np.array([0.1, 0.0]) + np.array([0.0, -0.2])) / 3
    np.testing.assert_allclose(dp_warm_start_theta(phi, 1.0, 0.0, np.zeros(3)), expected, rtol=1e-6)
    noisy = dp_warm_start_theta(phi, 1.0, 1.0, np.random.default_rng(0).standard_normal(3))
    assert not np.allclose(noisy, expected)


def test_a_private_runs_console_line_carries_no_unnoised_count_loss_or_metric():
    """Under DP the per-round console line (and so the SuperLink's log in a deployment) shows the round, epsilon
    and time only; the user count, loss and metrics stay in diagnostics/."""
    from common.evaluation.report import format_round

    row = {"round": 3, "users": 7777, "train-loss": 1.2345, "val-hr@10": 0.4321, "val-ndcg@10": 0.2109,
           "val-hr@10-sampled": 0.6543, "epsilon": 2.5, "seconds": 1.0}
    public = format_round(row, 10, 10)
    assert "7777" in public and "1.2345" in public and "0.4321" in public  # the non-private line shows them
    line = format_round(row, 10, 10, private=True)
    assert "epsilon 2.500" in line and not any(x in line for x in ("7777", "1.2345", "0.4321", "0.2109", "0.6543"))
