"""Accounting with dp-accounting: DpEvents, epsilon, noise calibration, the largest number of rounds, local DP-SGD's example-level epsilon."""

from __future__ import annotations

import functools
import math
from typing import Callable

import dp_accounting
import numpy as np

__all__ = ["dp_event", "epsilon_for", "calibrate_noise", "max_rounds", "ACCOUNTANTS", "local_dp_event",
    "local_epsilon", "local_epsilon_bound"]


ACCOUNTANTS = ("rdp", "pld")


def _check_q(q: float) -> float:
    if not (isinstance(q, (int, float, np.integer, np.floating)) and 0.0 <= float(q) <= 1.0):
        raise ValueError(f"Sampling rate must be in [0, 1]. Found {q}.")
    return float(q)


def _check_z(z: float) -> float:
    if not (isinstance(z, (int, float, np.integer, np.floating)) and 0.0 <= float(z) < math.inf):
        raise ValueError(f"Noise multiplier must be non-negative and finite. Found {z}.")
    return float(z)


def _check_delta(delta: float) -> float:
    if not (isinstance(delta, (int, float, np.integer, np.floating)) and 0.0 < float(delta) < 1.0):
        raise ValueError(f"Delta must be in (0, 1). Found {delta}.")
    return float(delta)


def _check_clip(clip_norm: float) -> float:
    if not (isinstance(clip_norm, (int, float, np.integer, np.floating)) and 0.0 < float(clip_norm) < math.inf):
        raise ValueError(f"Clip norm must be positive and finite. Found {clip_norm}.")
    return float(clip_norm)


def _check_target(target_epsilon: float) -> float:
    if not (isinstance(target_epsilon, (int, float, np.integer, np.floating))
            and 0.0 < float(target_epsilon) < math.inf):
        raise ValueError(f"Target epsilon must be positive and finite. Found {target_epsilon}.")
    return float(target_epsilon)


def _check_rounds(rounds: int, name: str = "Number of rounds") -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ValueError(f"{name} must be a non-negative integer. Found {rounds}.")
    return int(rounds)


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"Accountant must be one of {ACCOUNTANTS}. Found {accountant!r}.")
    return accountant


def dp_event(q: float, z: float, rounds: int) -> dp_accounting.DpEvent:
    """DpEvent of `rounds` DP-FedAvg rounds: SelfComposed(PoissonSampled(q, Gaussian(z)), rounds).

    q == 1 (every user, every round) composes GaussianDpEvent(z) directly.
    """
    q, z, rounds = _check_q(q), _check_z(z), _check_rounds(rounds)
    inner: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
    if q < 1.0:
        inner = dp_accounting.PoissonSampledDpEvent(q, inner)
    return dp_accounting.SelfComposedDpEvent(inner, rounds)


def _make_accountant(accountant: str) -> Callable[[], dp_accounting.PrivacyAccountant]:
    _check_accountant(accountant)
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant
    return dp_accounting.pld.PLDAccountant


@functools.lru_cache(maxsize=4096)
def _epsilon_of(event: dp_accounting.DpEvent, delta: float, accountant: str) -> float:
    """Epsilon of one (hashable) DpEvent from a fresh accountant; memoised, as it is deterministic."""
    return float(_make_accountant(accountant)().compose(event).get_epsilon(delta))


class _MemoAccountant(dp_accounting.PrivacyAccountant):
    """Accountant facade for calibrate_dp_mechanism: the epsilon of its composed event comes from
    _epsilon_of (a fresh real accountant, memoised), so search points are never recomputed."""

    def __init__(self, accountant: str):
        super().__init__(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
        self._accountant = accountant

    def _maybe_compose(self, event, count, do_compose):
        # Support is checked by the real accountant in get_epsilon.
        return None

    def get_epsilon(self, target_delta: float) -> float:
        return _epsilon_of(self.ledger, float(target_delta), self._accountant)


def epsilon_for(q: float, z: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon (at delta) of `rounds` DP-FedAvg rounds with sampling rate q and noise multiplier z.

    rounds == 0 or q == 0 -> 0.0 (nothing released about any user); z == 0 -> inf.
    accountant: "rdp" (dp_accounting.rdp.RdpAccountant) or "pld" (dp_accounting.pld.PLDAccountant).
    """
    q, z, rounds, delta = _check_q(q), _check_z(z), _check_rounds(rounds), _check_delta(delta)
    _check_accountant(accountant)
    if rounds == 0 or q == 0.0:
        return 0.0
    if z == 0.0:
        return math.inf
    return _epsilon_of(dp_event(q, z, rounds), delta, accountant)


def calibrate_noise(target_epsilon: float, q: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Smallest noise multiplier z (to 1e-3 relative) with epsilon_for(q, z, rounds, delta) <= target.

    Uses dp_accounting.calibrate_dp_mechanism over log z on an ExplicitBracketInterval found here
    (epsilon is decreasing in z); the result never overshoots the target. q == 0 or rounds == 0 -> 0.0.
    """
    target = _check_target(target_epsilon)
    q, rounds, delta = _check_q(q), _check_rounds(rounds), _check_delta(delta)
    _check_accountant(accountant)
    if rounds == 0 or q == 0.0:
        return 0.0

    def eps(z: float) -> float:
        return epsilon_for(q, z, rounds, delta, accountant)

    # Bracket [lo, hi] with eps(lo) > target >= eps(hi). For PLD start from the (fast) RDP answer:
    # PLD is the tighter accountant, so its z is usually a little smaller.
    hi = calibrate_noise(target, q, rounds, delta, "rdp") if accountant == "pld" else 1.0
    while eps(hi) > target:
        hi *= 2.0
        if hi > 1e8:
            raise ValueError(f"No noise multiplier up to 1e8 reaches target epsilon {target}.")
    step = 0.8 if accountant == "pld" else 0.5   # small z makes PLD slow: approach it gently
    lo = hi * step
    while eps(lo) <= target:
        hi, lo = lo, lo * step
        if lo < 1e-6:
            return hi
    # Search over t = log z so that the tolerance is relative: |t - t*| <= log(1.001).
    tol = math.log1p(1e-3)
    ends = {math.log(lo): lo, math.log(hi): hi}     # exact endpoints: memoised already

    def event(t: float) -> dp_accounting.DpEvent:
        return dp_event(q, ends.get(t, math.exp(t)), rounds)

    t = dp_accounting.calibrate_dp_mechanism(
        lambda: _MemoAccountant(accountant),
        event,
        target, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(math.log(lo), math.log(hi)),
        tol=tol,
    )
    z = ends.get(t, math.exp(t))
    while eps(z) > target:          # belt and braces: never overshoot
        t += tol / 10.0
        z = math.exp(t)
    return z


def max_rounds(target_epsilon: float, q: float, z: float, delta: float, accountant: str = "rdp",
               limit: int = 100000) -> int:
    """Largest T <= limit with epsilon_for(q, z, T, delta) <= target (0 if one round already exceeds).

    Exponential then binary search over T (epsilon is non-decreasing in T).
    """
    target = _check_target(target_epsilon)
    q, z, delta = _check_q(q), _check_z(z), _check_delta(delta)
    limit = _check_rounds(limit, "Round limit")
    _check_accountant(accountant)

    def ok(t: int) -> bool:
        return epsilon_for(q, z, t, delta, accountant) <= target

    if limit == 0 or not ok(1):
        return 0
    if ok(limit):
        return limit
    lo = 1
    if accountant == "pld":           # PLD <= RDP up to discretisation: start from the RDP answer
        r = max_rounds(target, q, z, delta, "rdp", limit)
        if r > lo and ok(r):
            lo = r
    hi = lo * 2
    while hi < limit and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit)               # invariant: ok(lo), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def local_dp_event(z: float, steps_per_round: int, participations: int, warm_starts: int = 0
                   ) -> dp_accounting.DpEvent:
    """DpEvent of one client's local DP-SGD: full-batch steps (no sampling, q = 1), each a Gaussian
    mechanism with noise multiplier z, `steps_per_round` per round over `participations` rounds, plus
    `warm_starts` DP warm starts of theta_u (`common.model.training.dp_warm_start_theta`, one Gaussian mechanism each).

    Neighbouring datasets: add or remove one engagement. Each release is a sum of per-example terms of
    L2 norm <= C plus N(0, (z C)^2 I), divided by a public constant, so each is Gaussian(z)."""
    z = _check_z(z)
    steps = _check_rounds(steps_per_round, "Steps per round") * _check_rounds(participations, "Participations")
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z),
                                             steps + _check_rounds(warm_starts, "Warm starts"))


@functools.lru_cache(maxsize=4096)
def local_epsilon(z: float, steps_per_round: int, participations: int, delta: float,
                  accountant: str = "rdp", warm_starts: int = 0) -> float:
    """Example-level epsilon of a client that took part in `participations` rounds (0 if nothing released)."""
    if participations == 0 and warm_starts == 0:
        return 0.0
    if z == 0:
        return math.inf
    return _epsilon_of(local_dp_event(z, steps_per_round, participations, warm_starts), _check_delta(delta),
                       accountant)


def local_epsilon_bound(z: float, steps_per_round: int, rounds: int, delta: float, accountant: str = "rdp",
                        dp_theta: bool = True, warm_starts: int = 1) -> float:
    """Example-level epsilon of a client that takes part in every one of `rounds` rounds, with `warm_starts` DP
    warm starts of theta_u when dp_theta (one per start of the run: a simulated node that restarts, as in a
    resumed run, warms its users up again): a bound for every client that depends on no one's data or sampling."""
    return local_epsilon(float(z), int(steps_per_round), int(rounds), float(delta), accountant,
                         int(warm_starts) if dp_theta else 0)
