"""The privacy ledger: one record per released round, epsilon of the whole run."""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import asdict, dataclass, field, fields

import dp_accounting

from common.io import atomic_file
from common.privacy.accounting import _check_accountant, _check_clip, _check_delta, _check_q, _check_rounds, _check_z, _epsilon_of, _make_accountant, dp_event

__all__ = ["RoundRecord", "PrivacyLedger"]


@dataclass(frozen=True)
class RoundRecord:
    """One immutable ledger entry: the DP parameters of one round and the cumulative epsilon.

    Only public or DP-released values (q, z, C, epsilon): the ledger is released, so it never holds a count of
    the users sampled (an unnoised, data-dependent value)."""

    round: int
    sample_rate: float        # q
    noise_multiplier: float   # z
    clip_norm: float          # C
    epsilon: float            # cumulative epsilon after this round (at the ledger's delta)


@functools.lru_cache(maxsize=256)
def _epsilon_of_runs(runs: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """Epsilon of consecutive runs (q, z, rounds) composed: one fresh accountant, memoised."""
    if len(runs) == 1:
        return _epsilon_of(dp_event(*runs[0]), delta, accountant)
    event = dp_accounting.ComposedDpEvent([dp_event(q, z, n) for q, z, n in runs])
    return float(_make_accountant(accountant)().compose(event).get_epsilon(delta))


def _runs(pairs: list[tuple[float, float]]) -> tuple[tuple[float, float, int], ...]:
    """Per-round (q, z) as runs of equal settings: ((q, z, rounds), ...)."""
    runs: list[list] = []
    for q, z in pairs:
        if runs and (runs[-1][0], runs[-1][1]) == (q, z):
            runs[-1][2] += 1
        else:
            runs.append([q, z, 1])
    return tuple(tuple(r) for r in runs)


def _fmt(x: float) -> str:
    return repr(float(f"{float(x):.6g}"))


@dataclass
class PrivacyLedger:
    """Append-only record of DP-FedAvg rounds; epsilon recomputed from the whole ledger each time
    (one fresh accountant over all rounds, runs of equal (q, z) self-composed; memoised).

    delta: target delta (e.g. < 1/number of users). accountant: "rdp" | "pld" (dp-accounting).
    """

    delta: float
    accountant: str = "rdp"
    records: list[RoundRecord] = field(default_factory=list)

    def __post_init__(self):
        self.delta = _check_delta(self.delta)
        _check_accountant(self.accountant)

    def _epsilon(self, pairs: list[tuple[float, float]]) -> float:
        pairs = [(q, z) for q, z in pairs if q > 0.0]
        if not pairs:
            return 0.0
        if any(z == 0.0 for _, z in pairs):
            return math.inf
        return _epsilon_of_runs(_runs(pairs), self.delta, self.accountant)

    def _pairs(self) -> list[tuple[float, float]]:
        return [(r.sample_rate, r.noise_multiplier) for r in self.records]

    def epsilon_after(self, q: float, z: float, rounds_more: int = 1) -> float:
        """Epsilon if `rounds_more` rounds with (q, z) were added to the recorded ones."""
        q, z = _check_q(q), _check_z(z)
        rounds_more = _check_rounds(rounds_more)
        return self._epsilon(self._pairs() + [(q, z)] * rounds_more)

    def append(self, round: int, q: float, z: float, C: float, replay: bool = False) -> RoundRecord:
        """Record one round (round numbers strictly increasing, except a round that a resumed run replays,
        `replay`, with a fresh sample) and return its entry."""
        round = _check_rounds(round, "Round")
        if self.records and round <= self.records[-1].round and not replay:
            raise ValueError(f"Round must be greater than the last recorded round {self.records[-1].round}. "
                             f"Found {round}.")
        q, z, C = _check_q(q), _check_z(z), _check_clip(C)
        rec = RoundRecord(round=round, sample_rate=q, noise_multiplier=z, clip_norm=C,
                          epsilon=self.epsilon_after(q, z, 1))
        self.records.append(rec)
        return rec

    def epsilon(self) -> float:
        """Epsilon of the recorded rounds (0.0 if none)."""
        return self._epsilon(self._pairs())

    def to_rows(self) -> list[dict]:
        """One dict per round with the RoundRecord fields."""
        return [asdict(r) for r in self.records]

    def write_csv(self, path) -> None:
        """Write to_rows() as CSV (header always written), atomically (common.io.atomic_file)."""
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(RoundRecord)])
            w.writeheader()
            w.writerows(self.to_rows())

    def statement(self, unit: str = "user") -> str:
        """One readable sentence stating the guarantee of the recorded rounds (epsilon rounded up)."""
        n = len(self.records)
        eps = self.epsilon()
        acc = {"rdp": "RDP", "pld": "PLD"}[self.accountant]

        def values(attr: str) -> str:
            vs = sorted({getattr(r, attr) for r in self.records})
            if not vs:
                return "n/a"
            return _fmt(vs[0]) if len(vs) == 1 else f"{_fmt(vs[0])} to {_fmt(vs[-1])}"

        how = (f"over {n} round{'s' if n != 1 else ''} of DP-FedAvg with Poisson sampling "
               f"(q = {values('sample_rate')}), noise multiplier {values('noise_multiplier')}, "
               f"clip norm {values('clip_norm')}, {acc} accountant (dp-accounting).")
        if n == 0:
            return (f"(ε = 0.00, δ = {_fmt(self.delta)}) {unit}-level differential privacy: no DP-FedAvg "
                    f"rounds recorded yet, {acc} accountant (dp-accounting).")
        if math.isinf(eps):
            return (f"No finite (ε, δ = {_fmt(self.delta)}) {unit}-level differential privacy guarantee "
                    f"(a round without noise was recorded) {how}")
        eps_up = math.ceil(eps * 100.0 - 1e-9) / 100.0
        return (f"(ε = {eps_up:.2f}, δ = {_fmt(self.delta)}) {unit}-level differential privacy "
                f"for all shared-parameter updates {how}")
