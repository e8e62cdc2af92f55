"""The written guarantees: central and local statements and reports."""

from __future__ import annotations

import math

import numpy as np

from common.privacy.accounting import local_epsilon, local_epsilon_bound
from common.privacy.ledger import PrivacyLedger, _fmt

__all__ = ["MASK_SEED_WEAKNESS", "central_statement", "local_statement", "local_report", "local_guarantee"]


#: What Flower 1.23's masks cost an attacker, stated in every secure run's privacy.json and console.
MASK_SEED_WEAKNESS = (
    "Flower 1.23's SecAgg+ derives every mask from a 32-bit seed (pseudo_rand_gen folds the 256-bit key; "
    "flwrlabs/flower#7522): the server can test a seed guess against a masked vector at about 1.5 microseconds "
    "a guess on one core, so all 2^32 seeds of one mask take about 2 hours. A node with a single neighbour (a "
    "round of 2 nodes) loses its protection to a curious server within hours; with k neighbours the search is "
    "2^(32 k) guesses, out of reach for k >= 2, but below the protocol's intended 128-bit strength. Rounds of 2 "
    "nodes are skipped unless secagg-accept-two-nodes=true.")


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
