"""Secure aggregation: the public arithmetic around Flower's SecAgg+ (Bell et al. 2020).

SecAgg+ sums vectors of integers mod M = 2^32 so that the server learns the sum over the round's nodes and
nothing about one node's vector. A node's training reply becomes one such vector, in `pack` order:

    update / (U C)                  one array per shared parameter (sorted names), each user's update clipped to
                                    L2 norm C, so every value of the node's sum lies in [-1, 1]
    [users, shifted] / U            the node's user count and its adaptive-clipping count (sum of 1[norm <= C] - 1/2)

An evaluation reply becomes one array [users, sum over its users of each metric] / U (each metric is a rate in
[0, 1] per user, `pack_metrics`); the server divides the summed metrics by the summed user count.

U (`secagg-max-users`: the most users one node trains in a round) and C (the round's clip norm) are public.
Flower's quantiser maps [-1, 1] to integers in [0, T] by stochastic rounding (unbiased; each value is off by
less than one step 2/T), and `unpack` turns the unmasked integer sum back into the sums over the nodes.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import numpy as np

from common.federation.protocol import NUM_USERS

__all__ = ["MODULUS", "CLIPPING_RANGE", "MAX_BITS", "quantization_range", "shares_and_threshold", "pack",
           "unpack", "check_users", "pack_metrics", "unpack_metrics", "error_bound",
           "rounding_sensitivity", "value_names", "private_key_to_bytes", "bytes_to_private_key", "tolerance",
           "describe_tolerance"]

#: SecAgg+ sums mod this (Flower's `modulus_range`; its masks are uniform below it)
MODULUS = 2**32
#: every packed value lies in [-CLIPPING_RANGE, CLIPPING_RANGE] (Flower's `clipping_range`)
CLIPPING_RANGE = 1.0
#: at most 2^MAX_BITS quantisation levels (Flower's quantiser rounds into int32)
MAX_BITS = 24
#: the name of the packed statistics array (users, clip-shifted-count)
STATS = "secagg/stats"


def quantization_range(n_nodes: int) -> int:
    """T: the largest power of two <= 2^MAX_BITS whose n_nodes-fold sum (each value in [0, T]) stays below M."""
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be >= 1, got {n_nodes}")
    bits = min(MAX_BITS, int(math.floor(math.log2((MODULUS - 1) / n_nodes))))
    if bits < 8:
        raise ValueError(f"{n_nodes} nodes in one secure round leave fewer than 2^8 quantisation levels under "
                         f"M = 2^32; sample fewer nodes per round")
    return 2**bits


def shares_and_threshold(n_nodes: int, shares: int = 0, threshold: int = 0) -> tuple[int, int]:
    """SecAgg+'s k (each node's secrets go to itself and k - 1 neighbours) and t (shares that rebuild a secret).

    shares 0: all nodes up to 2 ceil(log2 n) + 1 (SecAgg+'s logarithmic neighbourhood); threshold 0: a majority
    of the k shares, at least 2. A node's update stays hidden unless the server and t - 1 of its neighbours
    collude; a round survives while every node keeps t live neighbours (itself included)."""
    k = shares or min(n_nodes, 2 * math.ceil(math.log2(max(n_nodes, 2))) + 1)
    k = min(k, n_nodes)
    t = threshold or max(2, k // 2 + 1)
    if not 2 <= t <= k:
        raise ValueError(f"secure aggregation needs 2 <= threshold <= shares; got threshold {t}, shares {k} "
                         f"for {n_nodes} nodes (a round needs at least 2 nodes)")
    return k, t


def value_names(param_names: Sequence[str]) -> list[str]:
    """The packed arrays, in order: the shared parameters (sorted), then STATS."""
    return sorted(param_names) + [STATS]


def pack(update: Mapping[str, np.ndarray], users: int, shifted: float, max_users: int,
         clip: float) -> list[np.ndarray]:
    """A node's reply as SecAgg+'s input: update / (U C) per parameter (sorted names), then [users, shifted] / U.

    update: the sum over the node's sampled users of their updates, each clipped to L2 norm `clip`; users <=
    max_users. Every value then lies in [-1, 1]."""
    check_users(users, max_users)
    scale = 1.0 / (max_users * clip)
    out = [np.asarray(update[k], np.float64) * scale for k in sorted(update)]
    out.append(np.array([users, shifted], np.float64) / max_users)
    return out


def unpack(sums: Sequence[np.ndarray], param_names: Sequence[str], max_users: int,
           clip: float) -> tuple[dict[str, np.ndarray], int, float]:
    """The inverse of `pack` applied to the (dequantised) sum over nodes: ({name: summed update}, users, shifted).

    The user count is rounded to the integer it must be (its error is far below 1/2; see `error_bound`)."""
    names = sorted(param_names)
    if len(sums) != len(names) + 1:
        raise ValueError(f"expected {len(names) + 1} summed arrays, got {len(sums)}")
    total = {k: np.asarray(v, np.float64) * (max_users * clip) for k, v in zip(names, sums)}
    users, shifted = (np.asarray(sums[-1], np.float64) * max_users).tolist()
    return total, int(round(users)), float(shifted)


def check_users(users: int, max_users: int) -> None:
    """A node with more users than U in a round must not send (its values could leave [-1, 1])."""
    if users > max_users:
        raise ValueError(f"this node has {users} users this round, more than secagg-max-users = {max_users} (the "
                         f"public bound secure aggregation scales by); it sends nothing. Raise secagg-max-users.")


def pack_metrics(metrics: Mapping[str, float], keys: Sequence[str], max_users: int) -> list[np.ndarray]:
    """An evaluation reply as SecAgg+'s input: [[users, users x mean of each key]] / U, values in [0, 1]."""
    users = int(metrics[NUM_USERS])
    check_users(users, max_users)
    return [np.array([users] + [users * float(metrics[k]) for k in keys], np.float64) / max_users]


def unpack_metrics(sums: Sequence[np.ndarray], keys: Sequence[str], max_users: int) -> dict[str, float | int]:
    """The summed `pack_metrics` arrays -> {"num-users": users, key: mean over all users} (means 0 without users)."""
    values = np.asarray(sums[0], np.float64) * max_users
    users = int(round(values[0]))
    return {NUM_USERS: users, **{k: float(v / users) if users else 0.0 for k, v in zip(keys, values[1:])}}


def rounding_sensitivity(n_coords: int, max_users: int, clip: float, levels: int) -> float:
    """What stochastic rounding adds to the L2 sensitivity of a secure sum: adding or removing one user moves its
    node's packed values by at most C in L2 before rounding, and each rounded value is off by less than one step
    2/T (times U C) either way, so the rounded vectors differ by less than C + 2 sqrt(d) x 2 U C / T."""
    return 2.0 * math.sqrt(n_coords) * 2.0 * CLIPPING_RANGE / levels * max_users * clip


def error_bound(n_nodes: int, max_users: int, clip: float, levels: int) -> float:
    """|secure sum - exact sum| bound of every value of the summed update: each node's values are off by less
    than one quantisation step 2/T, times the scale U C, summed over n nodes."""
    return n_nodes * 2.0 * CLIPPING_RANGE / levels * max_users * clip


#: the curve of Flower's SecAgg+ key pairs (flwr.supercore.primitives.asymmetric.generate_key_pairs)
KEY_BYTES = 48


def private_key_to_bytes(key) -> bytes:
    """A SecAgg+ private key (P-384, Flower's `generate_key_pairs`) as its 48-byte big-endian scalar.

    Flower serialises it as 306 bytes of PEM (PKCS8), and Shamir-shares those bytes in 16-byte chunks with
    pycryptodome's pure-Python arithmetic: 20 chunks where the scalar needs 4 (the same secret, fewer chunks)."""
    return key.private_numbers().private_value.to_bytes(KEY_BYTES, "big")


@functools.lru_cache(maxsize=2)
def bytes_to_private_key(data: bytes):
    """The inverse of `private_key_to_bytes` (cryptography's `derive_private_key`). Memoised (2 entries: a
    session's two keys): Flower's secaggplus_mod parses the node's own key once per neighbour."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if len(data) != KEY_BYTES:
        raise ValueError(f"a SecAgg+ private key is {KEY_BYTES} bytes here, got {len(data)}")
    return ec.derive_private_key(int.from_bytes(data, "big"), ec.SECP384R1())


def _hypergeom_tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ Hypergeometric(population, marked, draws)."""
    top = min(marked, draws)
    if at_least > top:
        return 0.0
    num = sum(math.comb(marked, i) * math.comb(population - marked, draws - i) for i in range(max(at_least, 0), top + 1))
    return num / math.comb(population, draws)


def tolerance(n: int, k: int, t: int, corrupt: float = 0.1, dropout: float = 0.1) -> dict:
    """What SecAgg+ with these parameters tolerates, on this project's neighbourhoods (server.secagg: a ring over
    a uniformly random order, each node with itself and the (k - 1) / 2 nodes either side).

    The three conditions are those of Bell et al. 2020 (SecAgg+, CCS '20, section 3): privacy needs fewer than t
    corrupted nodes among each honest node's k - 1 neighbours (else the server rebuilds both of its secrets);
    correctness needs at least t live nodes in every neighbourhood (itself included); and the honest live nodes
    must stay connected (else the server learns sums over parts). Returned:

      collude: the largest coalition of nodes (with the server) that cannot rebuild an honest node's secrets,
        whatever its position: t - 1 (the rest stays connected while colluders and dropouts number <= k - 2)
      drop: the most dropouts any round survives, wherever they fall: k - t
      connected: the most removed (corrupted or dropped) nodes that always leave the rest connected: k - 2
      p_privacy, p_dropout, p_split: with a fraction `corrupt` of corrupted and `dropout` of dropped nodes,
        placed at random, union bounds on the probability that each condition fails (exact hypergeometric
        terms; 0.0 when impossible)."""
    if not 2 <= t <= k <= n:
        raise ValueError(f"need 2 <= t <= k <= n, got t={t}, k={k}, n={n}")
    c, d = round(corrupt * n), round(dropout * n)
    half = (k - 1) // 2
    removed = c + d
    split = 0.0
    if k < n and removed >= 2 * half:  # two runs of `half` consecutive removed nodes split the ring
        split = math.comb(n, 2) * math.perm(removed, 2 * half) / math.perm(n, 2 * half)
    return {"n": n, "k": k, "t": t, "collude": t - 1, "drop": k - t, "connected": k - 2 if k < n else n - 1,
            "corrupt": corrupt, "dropout": dropout,
            "p_privacy": min(1.0, n * _hypergeom_tail(n - 1, c, k - 1, t)),
            "p_dropout": min(1.0, n * _hypergeom_tail(n - 1, d, k - 1, k - t)),  # k - t: the node itself may drop
            "p_split": min(1.0, split)}


def describe_tolerance(tol: dict) -> str:
    """One line for the console and the docs: the parameters and what they tolerate."""
    def p(x: float) -> str:
        return "0" if x == 0 else f"2^{math.log2(x):.0f}" if x < 0.5 else f"{x:.2f}"
    return (f"SecAgg+ at {tol['n']} nodes: k = {tol['k']} shares, threshold t = {tol['t']}; a node's update stays "
            f"hidden from the server with up to {tol['collude']} colluding nodes; any {tol['drop']} dropouts are "
            f"survived; with {tol['corrupt']:.0%} corrupted and {tol['dropout']:.0%} dropped nodes at random the "
            f"failure bounds are privacy {p(tol['p_privacy'])}, dropout {p(tol['p_dropout'])}, split "
            f"{p(tol['p_split'])} (Bell et al. 2020's conditions on this ring)")
