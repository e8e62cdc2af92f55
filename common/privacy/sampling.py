"""Secret Poisson sampling: the run's sampling key and per-user, per-round draws."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingKey", "SAMPLING_KEY_ENV", "user_rng", "user_uniforms", "poisson_sample", "training_members"]


#: Test-only: a hex key in this environment variable fixes the sampling key (the sampling is then NOT secret,
#: and the run's privacy statement says so). Used by tests that compare a resumed run with an uninterrupted one.
SAMPLING_KEY_ENV = "FEDCTX_TEST_ONLY_SAMPLING_KEY"


@dataclass(frozen=True)
class SamplingKey:
    """The server's secret for Poisson sampling (amplification by subsampling needs the sample to be secret).

    key: 32 bytes from os.urandom, drawn when a run starts; it never appears in an output (only in the
    server-secret checkpoint and round journal, for resume). Node n's sampling seed of round r is BLAKE2b keyed by
    it (a PRF of r and n), sent only to node n in round r; a node samples its users with
    `common.privacy.sampling.poisson_sample(..., seed, r)`.
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


def user_rng(seed: int, round_: int, user_key: str, purpose: str) -> np.random.Generator:
    """Random stream of one user in one round, independent of which node holds the user."""
    digest = hashlib.blake2b(f"{seed}|{round_}|{purpose}|{user_key}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def user_uniforms(seed: int, round_: int, user_keys: np.ndarray, purpose: str) -> np.ndarray:
    """[U] uniforms on [0, 1) with 53 bits, one per user, from BLAKE2b of (seed, round, purpose, user):
    independent of which node holds the user, and about 25x cheaper than a Generator per user."""
    prefix = f"{seed}|{round_}|{purpose}|"
    raw = b"".join(hashlib.blake2b((prefix + str(k)).encode(), digest_size=8).digest() for k in user_keys)
    return (np.frombuffer(raw, "<u8") >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def poisson_sample(user_keys: np.ndarray, q: float, seed: int, round_: int) -> np.ndarray:
    """Boolean mask [U]: each user takes part independently with probability q (Poisson sampling).

    The server owns q and the seed; the decision of a user depends only on (seed, round, user),
    so it is the same whether the user is alone on a device or in a simulated shard.
    """
    if q >= 1.0:
        return np.ones(len(user_keys), bool)
    return user_uniforms(seed, round_, user_keys, "sample") < q


def training_members(user_keys: np.ndarray, audit_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [U]: users who may train. The others (share `audit_fraction`, fixed by seed and
    user) never take part; they are the non-members of the membership-inference audit."""
    if audit_fraction <= 0.0:
        return np.ones(len(user_keys), bool)
    return user_uniforms(seed, 0, user_keys, "audit-holdout") >= audit_fraction
