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

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["MASK_SEED_WEAKNESS", "MODULUS", "CLIPPING_RANGE", "MAX_BITS", "quantization_range", "shares_and_threshold", "pack",
           "unpack", "check_users", "pack_metrics", "unpack_metrics", "error_bound",
           "rounding_sensitivity", "value_names"]

#: What Flower 1.23's masks cost an attacker, stated in every secure run's privacy.json and console.
MASK_SEED_WEAKNESS = (
    "Flower 1.23's SecAgg+ derives every mask from a 32-bit seed (pseudo_rand_gen folds the 256-bit key; "
    "flwrlabs/flower#7522): the server can test a seed guess against a masked vector at about 1.5 microseconds "
    "a guess on one core, so all 2^32 seeds of one mask take about 2 hours. A node with a single neighbour (a "
    "round of 2 nodes) loses its protection to a curious server within hours; with k neighbours the search is "
    "2^(32 k) guesses, out of reach for k >= 2, but below the protocol's intended 128-bit strength. Rounds of 2 "
    "nodes are skipped unless secagg-accept-two-nodes=true.")

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
    users = int(metrics["num-users"])
    check_users(users, max_users)
    return [np.array([users] + [users * float(metrics[k]) for k in keys], np.float64) / max_users]


def unpack_metrics(sums: Sequence[np.ndarray], keys: Sequence[str], max_users: int) -> dict[str, float | int]:
    """The summed `pack_metrics` arrays -> {"num-users": users, key: mean over all users} (means 0 without users)."""
    values = np.asarray(sums[0], np.float64) * max_users
    users = int(round(values[0]))
    return {"num-users": users, **{k: float(v / users) if users else 0.0 for k, v in zip(keys, values[1:])}}


def rounding_sensitivity(n_coords: int, max_users: int, clip: float, levels: int) -> float:
    """What stochastic rounding adds to the L2 sensitivity of a secure sum: adding or removing one user moves its
    node's packed values by at most C in L2 before rounding, and each rounded value is off by less than one step
    2/T (times U C) either way, so the rounded vectors differ by less than C + 2 sqrt(d) x 2 U C / T."""
    return 2.0 * math.sqrt(n_coords) * 2.0 * CLIPPING_RANGE / levels * max_users * clip


def error_bound(n_nodes: int, max_users: int, clip: float, levels: int) -> float:
    """|secure sum - exact sum| bound of every value of the summed update: each node's values are off by less
    than one quantisation step 2/T, times the scale U C, summed over n nodes."""
    return n_nodes * 2.0 * CLIPPING_RANGE / levels * max_users * clip
