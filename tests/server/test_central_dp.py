"""The server's central-DP parts: the query noises a sum and returns what it released (its DpEvent) and its next
state without changing anything; CentralDP accounts each release in the ledger with that event."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from common.privacy.ledger import PrivacyLedger
from common.privacy.noise import SecureGaussian
from server.central_dp import AdaptiveClip, CentralDP, DPFedAvgQuery, DPState

TOTAL = {"w": np.array([[1.0, -2.0], [0.5, 0.0]]), "b": np.array([3.0])}


def test_the_query_returns_the_noised_mean_its_event_and_the_next_state_and_changes_nothing():
    query = DPFedAvgQuery(noise_multiplier=0.5, denominator=4.0, noise=SecureGaussian(seed=7))
    state = query.initial_state(2.0)
    result = query.get_noised_result(TOTAL, state)
    draws = SecureGaussian(seed=7)  # the same stream, drawn as the query must: one N(0, (z C)^2) per tensor, in order
    for name, value in TOTAL.items():
        expected = (value + draws.normal(0.5 * 2.0, value.shape).astype(np.float64)) / 4.0
        np.testing.assert_allclose(result.mean[name], expected, rtol=1e-12)
    assert result.state == state == DPState(2.0)  # fixed clipping: the state stays
    assert result.event == dp_accounting.GaussianDpEvent(0.5) and result.unclipped_share is None
    with pytest.raises(AttributeError, match="cannot assign"):
        state.clip_norm = 1.0  # the state is explicit: a new one per round, never changed in place


def test_adaptive_clipping_moves_the_clip_in_the_next_state_and_splits_z_between_sum_and_count():
    rule = AdaptiveClip(quantile=0.5, lr=0.2, count_stddev=1.0)
    query = DPFedAvgQuery(noise_multiplier=0.8, denominator=10.0, noise=SecureGaussian(seed=3), adaptive=rule)
    state = query.initial_state(1.0)
    result = query.get_noised_result(TOTAL, state, shifted=2.0)
    draws = SecureGaussian(seed=3)
    z_sum = (0.8 ** -2 - (2 * 1.0) ** -2) ** -0.5  # z^-2 = z_sum^-2 + (2 sigma_b)^-2
    for name, value in TOTAL.items():
        expected = (value + draws.normal(z_sum * 1.0, value.shape).astype(np.float64)) / 10.0
        np.testing.assert_allclose(result.mean[name], expected, rtol=1e-12)
    count_noise = float(draws.normal(1.0, (1,))[0])  # drawn after the sum's noise
    below = min(1.0, max(0.0, (2.0 + count_noise) / 10.0 + 0.5))
    assert result.unclipped_share == pytest.approx(below)
    assert result.state.clip_norm == pytest.approx(math.exp(-0.2 * (below - 0.5)))
    assert state.clip_norm == 1.0  # the old state is untouched
    assert result.event == dp_accounting.GaussianDpEvent(0.8)  # the pair is one Gaussian mechanism of multiplier z


def test_a_release_is_accounted_in_the_ledger_with_its_own_event():
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    dp = CentralDP(clip_norm=1.0, noise_multiplier=1.1, denominator=20.0, ledger=ledger,
                   noise=SecureGaussian(seed=1), adaptive=AdaptiveClip(quantile=0.5, lr=0.2, count_stddev=5.0))
    events = []
    for round_ in (1, 2, 3):
        clip = dp.clip_norm
        release = dp.release(round_, 0.05, TOTAL, shifted=-1.0)
        assert release.clip_norm == clip == release.record.clip_norm  # noised and recorded with this round's C
        assert dp.clip_norm != clip  # the next round's C
        events.append(release.event)
        accountant = dp_accounting.rdp.RdpAccountant()  # an independent accountant over the released events
        accountant.compose(dp_accounting.ComposedDpEvent(events))
        assert release.record.epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert events[0] == dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1))
    assert [r.round for r in ledger.records] == [1, 2, 3]
