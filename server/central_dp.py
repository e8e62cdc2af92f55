"""Central DP at the server (user-level DP-FedAvg, McMahan et al. 2018), in parts:

    DPFedAvgQuery   noises a round's sum of clipped updates and says what it released: get_noised_result returns
                    the noised mean, the next state and the round's DpEvent (as TF Privacy's
                    DPQuery.get_noised_result); it changes nothing
    DPState         the query's explicit state: the round's clip norm C
    AdaptiveClip    the rule that moves C toward a quantile of the update norms (Andrew et al. 2021)
    CentralDP       a run's query, its current state and its ledger; `release` is the one place a round is noised
                    and accounted

The maths (noise, clip update, the split of z between the sum and the count) is common.privacy's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import dp_accounting
import numpy as np

from common.privacy.ledger import PrivacyLedger, RoundRecord
from common.privacy.noise import SecureGaussian, adaptive_sum_noise, next_clip_norm, noisy_mean

__all__ = ["AdaptiveClip", "DPState", "NoisedResult", "DPFedAvgQuery", "Release", "CentralDP"]


@dataclass(frozen=True)
class AdaptiveClip:
    """Quantile-based adaptive clipping (Andrew et al. 2021): each round the nodes also send the sum of
    1[norm <= C] - 1/2 over their sampled users; the server adds N(0, count_stddev^2) and moves C
    geometrically toward the `quantile` of the update norms with step `lr`."""

    quantile: float
    lr: float
    count_stddev: float

    def next_clip(self, clip_norm: float, shifted: float, expected_users: float,
                  noise: SecureGaussian) -> tuple[float, float]:
        """(the next C, b: the noisy share of users whose update was not clipped); one draw from `noise`."""
        count_noise = float(noise.normal(self.count_stddev, (1,))[0])
        return next_clip_norm(clip_norm, shifted, count_noise, expected_users, self.quantile, self.lr)


@dataclass(frozen=True)
class DPState:
    """The query's state between rounds: the clip norm C the nodes clip each user's update to."""

    clip_norm: float


@dataclass(frozen=True)
class NoisedResult:
    """mean: {name: float64 array} (sum + noise) / denominator; state: the next round's; event: the round's
    mechanism before sampling; unclipped_share: adaptive clipping's noisy b (released), None without it."""

    mean: dict[str, np.ndarray]
    state: DPState
    event: dp_accounting.DpEvent
    unclipped_share: float | None = None


@dataclass(frozen=True, eq=False)
class DPFedAvgQuery:
    """The server's DP-FedAvg query: the sum of the round's clipped updates gets N(0, (z_sum C')^2) and is divided
    by the fixed denominator q N (expected users; never the realised count, which would leak the sample).
    C' = C + extra_sensitivity (SecAgg+'s stochastic rounding). With adaptive clipping the sum gets z_sum =
    adaptive_sum_noise(z, count_stddev) and the count the rest, so the pair is one Gaussian mechanism of
    multiplier z: the event is GaussianDpEvent(z) either way."""

    noise_multiplier: float
    denominator: float
    noise: SecureGaussian = field(default_factory=SecureGaussian)
    adaptive: AdaptiveClip | None = None

    @property
    def sum_noise_multiplier(self) -> float:
        """z_sum: the update sum's noise multiplier (z without adaptive clipping)."""
        if self.adaptive is None:
            return self.noise_multiplier
        return adaptive_sum_noise(self.noise_multiplier, self.adaptive.count_stddev)

    def initial_state(self, clip_norm: float) -> DPState:
        return DPState(float(clip_norm))

    def get_noised_result(self, total: Mapping[str, np.ndarray], state: DPState, shifted: float = 0.0,
                          extra_sensitivity: float = 0.0) -> NoisedResult:
        """The round's release from the sum of its clipped updates `total` and adaptive clipping's summed count
        `shifted` (ignored without it). Draws the sum's noise, then the count's."""
        mean = noisy_mean(total, state.clip_norm + extra_sensitivity, self.sum_noise_multiplier, self.denominator,
                          self.noise)
        if self.adaptive is None:
            return NoisedResult(mean, state, dp_accounting.GaussianDpEvent(self.noise_multiplier))
        clip, below = self.adaptive.next_clip(state.clip_norm, shifted, self.denominator, self.noise)
        return NoisedResult(mean, DPState(clip), dp_accounting.GaussianDpEvent(self.noise_multiplier), below)


@dataclass(frozen=True)
class Release:
    """One round's central-DP release: the noised mean, the round's DpEvent (Poisson-sampled at q < 1), its ledger
    record, the clip norm it was noised for and adaptive clipping's noisy unclipped share (None without it)."""

    mean: dict[str, np.ndarray]
    event: dp_accounting.DpEvent
    record: RoundRecord
    clip_norm: float
    unclipped_share: float | None


class CentralDP:
    """A run's central DP: the query (fixed), its state (replaced by each release, read as `clip_norm`) and the
    ledger every release is accounted in. clip_norm: C of the first round (it changes every round with adaptive
    clipping); denominator: q N; noise: the secure Gaussian source."""

    def __init__(self, clip_norm: float, noise_multiplier: float, denominator: float, ledger: PrivacyLedger,
                 noise: SecureGaussian | None = None, adaptive: AdaptiveClip | None = None) -> None:
        self.query = DPFedAvgQuery(noise_multiplier, denominator, noise if noise is not None else SecureGaussian(),
                                   adaptive)
        self.state = self.query.initial_state(clip_norm)
        self.ledger = ledger

    @property
    def clip_norm(self) -> float:
        return self.state.clip_norm

    @property
    def noise_multiplier(self) -> float:
        return self.query.noise_multiplier

    @property
    def denominator(self) -> float:
        return self.query.denominator

    @property
    def noise(self) -> SecureGaussian:
        return self.query.noise

    @property
    def adaptive(self) -> AdaptiveClip | None:
        return self.query.adaptive

    @property
    def sum_noise_multiplier(self) -> float:
        return self.query.sum_noise_multiplier

    def release(self, server_round: int, sample_rate: float, total: Mapping[str, np.ndarray], shifted: float = 0.0,
                extra_sensitivity: float = 0.0, replay: bool = False) -> Release:
        """Noise round `server_round`'s sum, account it (a `replay`: a round a resumed run runs again, with a fresh
        sample) and move to the query's next state."""
        result = self.query.get_noised_result(total, self.state, shifted, extra_sensitivity)
        event = result.event if sample_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(sample_rate, result.event)
        record = self.ledger.append(server_round, sample_rate, result.event.noise_multiplier, self.state.clip_norm,
                                    replay=replay)
        release = Release(result.mean, event, record, self.state.clip_norm, result.unclipped_share)
        self.state = result.state
        return release
