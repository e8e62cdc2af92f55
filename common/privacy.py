"""User-level differential privacy for federated averaging: clipping, secure noise, accounting.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent
Language Models"): each round samples users independently with probability q (Poisson sampling),
scales every sampled user's whole update to L2 norm <= C, sums the clipped updates, adds
N(0, (z*C)^2 I) and divides by a FIXED denominator (the expected number of users q*N), so one
user changes the released sum by at most C (add/remove-one adjacency).

The privacy loss of T rounds is the composition of T Poisson-subsampled Gaussian mechanisms,
accounted with Google's dp-accounting library (Renyi DP, Mironov 2017 / Mironov, Talwar, Zhang
2019; or privacy loss distributions, Koskela et al. 2020, Doroshenko et al. 2022).

Pure numpy + dp-accounting (+ cryptography for the noise keystream): no Flower, no TensorFlow.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Mapping

import dp_accounting
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.io import atomic_file
from common.secagg import MASK_SEED_WEAKNESS

__all__ = [
    "clip_factors",
    "SecureGaussian",
    "SamplingKey",
    "SAMPLING_KEY_ENV",
    "RoundRecord",
    "PrivacyLedger",
    "dp_event",
    "epsilon_for",
    "calibrate_noise",
    "max_rounds",
    "noisy_mean",
    "ACCOUNTANTS",
    "central_statement",
    "local_dp_event",
    "local_epsilon",
    "local_epsilon_bound",
    "local_statement",
    "local_report",
    "local_guarantee",
    "adaptive_sum_noise",
    "next_clip_norm",
]

ACCOUNTANTS = ("rdp", "pld")


# ----------------------------------------------------------------------------------------------
# Validation (messages in dp-accounting style: the rule, then "Found <value>.")

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


# ----------------------------------------------------------------------------------------------
# Clipping and noise

def clip_factors(norms: np.ndarray, clip_norm: float) -> np.ndarray:
    """Per-user scale [U] = min(1, C / norm) (norm 0 -> 1), so each user's whole update has L2 norm <= C.

    norms: [U] L2 norms of each user's whole update (all tensors concatenated). Returns float64 [U].
    Flat clipping as in DP-FedAvg (McMahan et al. 2018, Alg. 1, `ClipFn`).
    """
    C = _check_clip(clip_norm)
    n = np.asarray(norms, dtype=np.float64)
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        bad = n[~(np.isfinite(n) & (n >= 0))].ravel()[0]
        raise ValueError(f"Norms must be finite and non-negative. Found {bad}.")
    out = np.ones_like(n)
    over = n > C
    out[over] = C / n[over]
    # Guard against the last-ulp rounding of norm * (C / norm) > C.
    fix = over & (n * out > C)
    out[fix] = np.nextafter(out[fix], 0.0)
    return out


class SecureGaussian:
    """Gaussian noise from a cryptographically secure source, never from the experiment seed.

    SecureGaussian(seed=None) (production): every call draws a fresh 256-bit key and 128-bit counter
    from os.urandom and expands them with AES-256 in counter mode (the generator of NIST SP 800-90A
    CTR_DRBG, via `cryptography`/OpenSSL; about 3x faster than os.urandom alone). Box-Muller turns
    pairs (u, v) into normals: u has 53 random bits in (0, 1], so the radius sqrt(-2 ln u) reaches
    8.57 (no truncation below 8.5 sigma); v has 32 bits for the angle.
    seed=int: a deterministic numpy Generator, ONLY for tests.
    .normal(std, shape) -> float32 array of the given shape with i.i.d. N(0, std^2) entries.

    Caveat: like every floating-point sampler (also TF Privacy's), textbook Box-Muller does not
    defend against floating-point or timing side channels (Mironov 2012; Jin et al. 2022).
    """

    def __init__(self, seed: int | None = None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"Seed must be None (secure) or an int (tests only). Found {seed!r}.")
        self.seed = None if seed is None else int(seed)
        self.secure = seed is None
        self._rng = None if seed is None else np.random.default_rng(self.seed)

    def __repr__(self) -> str:
        return "SecureGaussian(AES-256-CTR keyed by os.urandom)" if self.secure else \
            f"SecureGaussian(seed={self.seed}, TEST ONLY)"

    @staticmethod
    def _secure_bytes(n: int) -> np.ndarray:
        """n cryptographically secure random bytes (AES-256-CTR keystream under a fresh os.urandom key)."""
        enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
        buf = bytearray(n + 15)  # update_into needs block-size slack
        enc.update_into(bytes(n), buf)
        return np.frombuffer(buf, np.uint8)[:n]

    def integers(self, low: int, high: int, size: tuple[int, ...]) -> np.ndarray:
        """[size] int64 uniform on [low, high), like numpy's Generator.integers: from the keystream, 64 bits per
        value reduced modulo (high - low) (bias < (high - low) / 2^64). Used for the negatives of local DP-SGD,
        which must be secret: a public stream would shift with the number of examples."""
        span = int(high) - int(low)
        if span < 1:
            raise ValueError(f"High must be greater than low. Found low={low}, high={high}.")
        size = (int(size),) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        if self._rng is not None:
            return self._rng.integers(low, high, size=size)
        n = math.prod(size)
        raw = self._secure_bytes(8 * n).view(np.uint64)
        return (raw % np.uint64(span)).astype(np.int64).reshape(size) + int(low)

    def normal(self, std: float, shape: tuple[int, ...]) -> np.ndarray:
        """[shape] float32 samples of N(0, std^2)."""
        if not (isinstance(std, (int, float, np.integer, np.floating)) and 0.0 <= float(std) < math.inf):
            raise ValueError(f"Standard deviation must be non-negative and finite. Found {std}.")
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"Shape must have non-negative dimensions. Found {shape}.")
        n = math.prod(shape)
        if self._rng is not None:
            return (float(std) * self._rng.standard_normal(shape)).astype(np.float32)
        m = (n + 1) // 2
        bits = self._secure_bytes(12 * m)
        u = (((bits[: 8 * m].view(np.uint64) >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53)
        radius = np.sqrt(np.float32(-2.0) * np.log(u.astype(np.float32)))
        angle = bits[8 * m:].view(np.uint32).astype(np.float32) * np.float32(2.0 * np.pi * 2.0 ** -32)
        z = np.empty(2 * m, np.float32)
        np.multiply(radius, np.cos(angle), out=z[:m])
        np.multiply(radius, np.sin(angle), out=z[m:])
        return np.float32(std) * z[:n].reshape(shape)


#: Test-only: a hex key in this environment variable fixes the sampling key (the sampling is then NOT secret,
#: and the run's privacy statement says so). Used by tests that compare a resumed run with an uninterrupted one.
SAMPLING_KEY_ENV = "FEDCTX_TEST_ONLY_SAMPLING_KEY"


@dataclass(frozen=True)
class SamplingKey:
    """The server's secret for Poisson sampling (amplification by subsampling needs the sample to be secret).

    key: 32 bytes from os.urandom, drawn when a run starts; it never appears in an output (only in the
    server-secret checkpoint and round journal, for resume). Node n's sampling seed of round r is BLAKE2b keyed by
    it (a PRF of r and n), sent only to node n in round r; a node samples its users with
    `common.federated.poisson_sample(..., seed, r)`.
    secret: False when the key came from SAMPLING_KEY_ENV (tests only).
    """

    key: bytes
    secret: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != 32:
            found = len(self.key) if isinstance(self.key, bytes) else type(self.key).__name__
            raise ValueError(f"Sampling key must be 32 bytes. Found {found}.")

    @classmethod
    def fresh(cls) -> "SamplingKey":
        """A new secret key (or the test-only key of SAMPLING_KEY_ENV, marked not secret)."""
        fixed = os.environ.get(SAMPLING_KEY_ENV)
        if fixed:
            return cls(hashlib.blake2b(fixed.encode(), digest_size=32).digest(), secret=False)
        return cls(os.urandom(32))

    @classmethod
    def from_hex(cls, text: str, secret: bool = True) -> "SamplingKey":
        return cls(bytes.fromhex(text), secret)

    def hex(self) -> str:
        return self.key.hex()

    def round_seed(self, round_: int, attempt: int = 0, node: int | None = None) -> int:
        """Sampling seed of round `round_` (63 bits: fits Flower's int64 config values). `attempt` > 0: a round
        that a resumed run replays (it had begun before the interruption) draws a fresh, independent sample, so
        that its release composes with the lost one as the ledger accounts it. `node`: the seed of that node
        alone (a keyed PRF of the node id), so that no node can compute another node's users' sample."""
        message = int(round_).to_bytes(8, "little", signed=False)
        if attempt:
            message += int(attempt).to_bytes(8, "little", signed=False)
        if node is not None:
            message += b"node" + int(node).to_bytes(8, "little", signed=False)
        digest = hashlib.blake2b(message, key=self.key, digest_size=8, person=b"fedctx-sampling").digest()
        return int.from_bytes(digest, "little") >> 1

    def __repr__(self) -> str:  # never print the key
        return "SamplingKey(secret)" if self.secret else "SamplingKey(TEST ONLY, not secret)"


def noisy_mean(total: Mapping[str, np.ndarray], clip_norm: float, noise_multiplier: float,
               denominator: float, noise: SecureGaussian) -> dict[str, np.ndarray]:
    """DP-FedAvg server step (McMahan et al. 2018, Alg. 1 with the fixed-denominator estimator).

    total: {name: array} sum over sampled users of CLIPPED updates (each user's norm <= C).
    Returns {name: float64 array} = (total + N(0, (z*C)^2 I)) / denominator, where the noise is
    i.i.d. over every coordinate of every tensor and denominator is FIXED (expected users q*N),
    never the realised count (which would itself leak the sample).
    """
    C = _check_clip(clip_norm)
    z = _check_z(noise_multiplier)
    if not (isinstance(denominator, (int, float, np.integer, np.floating)) and 0.0 < float(denominator) < math.inf):
        raise ValueError(f"Denominator must be positive and finite. Found {denominator}.")
    if not isinstance(noise, SecureGaussian):
        raise ValueError(f"Noise source must be a SecureGaussian. Found {type(noise).__name__}.")
    std = z * C
    out = {}
    for k, v in total.items():
        x = np.array(v, dtype=np.float64)
        if std > 0.0:
            x += noise.normal(std, x.shape)
        out[k] = x / float(denominator)
    return out


# ----------------------------------------------------------------------------------------------
# Accounting

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


# ----------------------------------------------------------------------------------------------
# Ledger

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


def central_statement(ledger: PrivacyLedger, sampling_secret: bool, item_table: bool, secure: bool = False) -> str:
    """The user-level guarantee of a run as stated to its readers: the ledger's sentence, the adversary it holds
    against, and what it does not cover. Amplification by Poisson subsampling needs a secret sample: with a
    test-only (public) sampling key the sentence says the epsilon does not hold. secure: the rounds ran SecAgg+
    (server.secagg), so the server received sums over nodes, never one node's sum."""
    base = ledger.statement("user")
    if not sampling_secret:
        return ("NO valid guarantee: the sampling key was fixed by the test-only FEDCTX_TEST_ONLY_SAMPLING_KEY, so who "
                "took part in each round is not secret and amplification by subsampling does not apply. Without it: "
                + base)
    seen = (" (with the hybrid item table, the rows its users' training touched, i.e. which items they engaged with)"
            if item_table else "")
    if secure:
        server = ("Not covered: what the server itself receives before it adds the noise. With secure aggregation "
                  "(SecAgg+, against a server that follows the protocol and fewer than threshold colluding nodes; "
                  "and within the limit of Flower's masks: " + MASK_SEED_WEAKNESS + ") that is each round's exact "
                  "sum over the "
                  "nodes that replied, of the clipped updates, the user count and the evaluation metrics, never one "
                  "node's; a round whose sum covers a single node (e.g. all but one dropped) reveals that node's sum "
                  "to the server. ")
    else:
        server = ("Not covered: what the server itself receives before it adds the noise, i.e. each node's clipped "
                  f"sum{seen} and the counts and losses nodes report; the evaluation metrics; ")
    return (base + " It holds against anyone who sees the released outputs (global_model.npz, privacy_ledger.csv, "
            "privacy.json) and everything computed from them; the Poisson sample of each round is drawn from a "
            "server secret that appears in no output; each node receives only its own seed of each round, from which "
            "it can compute its own users' sample and no other node's. " + server +
            "The diagnostics/ folder of a simulation is not covered. The number of users N (in the denominator q N "
            "and the default delta) is treated as public.")


# ----------------------------------------------------------------------------------------------
# Local DP-SGD on the device (example-level)

def local_dp_event(z: float, steps_per_round: int, participations: int, warm_starts: int = 0
                   ) -> dp_accounting.DpEvent:
    """DpEvent of one client's local DP-SGD: full-batch steps (no sampling, q = 1), each a Gaussian
    mechanism with noise multiplier z, `steps_per_round` per round over `participations` rounds, plus
    `warm_starts` DP warm starts of theta_u (`common.model.dp_warm_start_theta`, one Gaussian mechanism each).

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


def local_statement(epsilon: float, z: float, steps_per_round: int, delta: float, clip_norm: float,
                    denominator: int, accountant: str, dp_theta: bool, warm_starts: int = 1) -> str:
    """The guarantee of local DP-SGD as one sentence: what it covers, against whom, and what it does not."""
    acc = {"rdp": "RDP", "pld": "PLD"}[accountant]
    how = (f"local DP-SGD on the device: full batch, {steps_per_round} step(s) per round, each example's gradient "
           f"clipped to {_fmt(clip_norm)}, noise multiplier {_fmt(z)}, noisy sum divided by the public constant "
           f"{denominator} (never by the user's own count), {acc} accountant (dp-accounting)")
    eps = f"{math.ceil(epsilon * 100 - 1e-9) / 100:.2f}" if math.isfinite(epsilon) else "inf"
    releases = "one Gaussian release" if warm_starts == 1 else f"at most {warm_starts} Gaussian releases"
    if not dp_theta:
        return (f"NO formal example-level guarantee: theta_u is trained on the device without noise "
                f"(local-dp-theta=false) and shapes every update the device sends. The DP-SGD noise on the shared "
                f"parameters alone would give (ε ≤ {eps}, δ = {_fmt(delta)}) if theta_u were public; {how}. "
                f"Set local-dp-theta=true for the guarantee.")
    return (f"(ε ≤ {eps}, δ = {_fmt(delta)}) example-level differential privacy (add or remove one engagement) "
            f"for every client, against anyone who sees what its device sends in training (the server included) "
            f"and everything computed from it (the released model); {how}; theta_u is trained with DP-SGD too and "
            f"warmed up by {releases} "
            f"(noise multiplier {_fmt(z)}). Not covered: the evaluation metrics "
            f"that nodes report (simulation diagnostics) and the fact that a device took part in a round.")


def local_report(participations: np.ndarray, z: float, steps_per_round: int, delta: float, clip_norm: float,
                 denominator: int, accountant: str = "rdp", dp_theta: bool = True,
                 warm_starts: np.ndarray | None = None) -> dict:
    """Distribution over clients of the example-level (epsilon, delta) of local DP-SGD (a device's own report).

    participations [N]: rounds each client took part in; warm_starts [N]: its DP warm starts of theta_u
    (default: none).
    """
    counts = np.asarray(participations, np.int64)
    warm = np.zeros_like(counts) if warm_starts is None else np.asarray(warm_starts, np.int64)
    eps = np.array([local_epsilon(float(z), int(steps_per_round), int(c), float(delta), accountant, int(w))
                    for c, w in zip(counts, warm)])
    stats = {name: float(f(eps)) for name, f in (("min", np.min), ("median", np.median), ("mean", np.mean),
                                                  ("p90", lambda e: np.percentile(e, 90)), ("max", np.max))
             } if len(eps) else {}
    statement = local_statement(stats.get("max", 0.0), z, steps_per_round, delta, clip_norm, denominator,
                                accountant, dp_theta)
    return {"unit": "example", "epsilon": stats, "delta": float(delta), "accountant": f"{accountant} (dp-accounting)",
            "noise_multiplier": float(z), "clip_norm": float(clip_norm), "steps_per_round": int(steps_per_round),
            "denominator": int(denominator), "neighbouring": "add or remove one engagement",
            "sampling": {"scheme": "full batch (every example, every local step)", "q": 1.0},
            "participations": {"min": int(counts.min()) if len(counts) else 0,
                               "max": int(counts.max()) if len(counts) else 0,
                               "mean": float(counts.mean()) if len(counts) else 0.0},
            "clients": int(len(counts)), "dp_theta": bool(dp_theta), "exact": bool(dp_theta),
            "statement": statement}


def local_guarantee(z: float, steps_per_round: int, rounds: int, delta: float, clip_norm: float,
                    accountant: str, dp_theta: bool, denominator: int, warm_starts: int = 1) -> dict:
    """What the server may state about local DP without knowing who took part: the bound of a client in every
    round (`local_epsilon_bound`), with `warm_starts` starts of the run (1 + resumes)."""
    eps = local_epsilon_bound(z, steps_per_round, rounds, delta, accountant, dp_theta, warm_starts)
    return {"unit": "example", "epsilon": eps, "epsilon_is": "bound for a client that takes part in every round",
            "delta": float(delta), "accountant": f"{accountant} (dp-accounting)", "noise_multiplier": float(z),
            "clip_norm": float(clip_norm), "steps_per_round": int(steps_per_round), "denominator": int(denominator),
            "neighbouring": "add or remove one engagement", "rounds": int(rounds), "dp_theta": bool(dp_theta),
            "exact": bool(dp_theta), "warm_starts": int(warm_starts) if dp_theta else 0,
            "statement": local_statement(eps, z, steps_per_round, delta, clip_norm, denominator, accountant,
                                         dp_theta, warm_starts)}


# ----------------------------------------------------------------------------------------------
# Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning
# with Adaptive Clipping"), as TensorFlow Privacy's QuantileAdaptiveClipSumQuery does it

def adaptive_sum_noise(z: float, count_stddev: float) -> float:
    """Noise multiplier z_sum of the update sum when the round also releases the clipped-count
    statistic with noise std sigma_b (sensitivity 1/2): z^-2 = z_sum^-2 + (2 sigma_b)^-2, so the pair
    is accounted as one Gaussian mechanism with multiplier z. Requires 2 sigma_b > z."""
    z = _check_z(z)
    if not (isinstance(count_stddev, (int, float, np.integer, np.floating)) and count_stddev > 0):
        raise ValueError(f"Clipped-count stddev must be positive. Found {count_stddev}.")
    if z == 0.0:
        return 0.0
    if 2.0 * count_stddev <= z:
        raise ValueError(f"Clipped-count stddev must exceed noise multiplier / 2 ({z / 2:.4g}) for adaptive "
                         f"clipping. Found {count_stddev}. Fix: raise clip-count-stddev or lower the noise.")
    return float((z ** -2 - (2.0 * count_stddev) ** -2) ** -0.5)


def next_clip_norm(clip_norm: float, shifted_count: float, count_noise: float, expected_users: float,
                   quantile: float, lr: float) -> tuple[float, float]:
    """Geometric quantile update of the clip norm.

    shifted_count: sum over sampled users of (1[norm <= C] - 1/2); count_noise: its Gaussian noise.
    Returns (new C = C exp(-lr (b - quantile)), b) with b = clamp((shifted + noise) / expected + 1/2, 0, 1)
    the noisy fraction of users whose update was not clipped.
    """
    below = min(1.0, max(0.0, (shifted_count + count_noise) / float(expected_users) + 0.5))
    return float(clip_norm * math.exp(-lr * (below - quantile))), below
