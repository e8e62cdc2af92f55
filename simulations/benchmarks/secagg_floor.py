"""The compute floor of a SecAgg+ round: Flower's own primitives, timed one call at a time, summed over the calls one
secure round makes. No transport, no scheduling, no training: what the round cannot cost less than on this machine
with Flower 1.23's protocol, whatever the plumbing around it.

    python -m simulations.benchmarks.secagg_floor --nodes 100 --values 330000 [--central-seconds 4.33]

Per node and session (`flwr.client.mod.secaggplus_mod`): two P-384 key pairs (setup); a Shamir split of the
32-byte mask seed and of the 48-byte private key into k shares (share keys); k - 1 ECDH + HKDF agreements and
Fernet encryptions of the shares; k - 1 agreements and Fernet decryptions again, k - 1 pairwise masks, one self
mask and the stochastic quantisation of the packed vector (masked input). The server rebuilds every surviving
node's mask seed from t shares and subtracts its self mask (unmask). A training round with the user floor
(`secagg-min-users`) runs two sessions: the user count (a vector of 2 values) and the update (`--values` values).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from simulations.benchmarks.device import latency_ms

__all__ = ["primitive_ms", "session_floor", "node_calls", "SERVER_CALLS"]


def _p50(fn, repeats: int) -> float:
    return latency_ms(fn, repeats)["p50_ms"]


def primitive_ms(values: int, nodes: int, k: int, t: int, repeats: int = 20) -> dict[str, float]:
    """Median ms of one call of each primitive a SecAgg+ session of `nodes` nodes uses, with Flower's own functions."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    from common.federation.secagg import CLIPPING_RANGE, MODULUS, private_key_to_bytes, quantization_range

    sk, _ = generate_key_pairs()
    _, pk = generate_key_pairs()
    seed, key = os.urandom(32), private_key_to_bytes(sk)
    shared = generate_shared_key(sk, pk)
    plaintext = os.urandom(2 * 8 + 2 * 48)  # two node ids and the two shares, about as Flower concatenates them
    ciphertext = encrypt(shared, plaintext)
    seed_shares = create_shares(seed, t, k)
    vector = np.random.default_rng(0).uniform(-1.0, 1.0, values).astype(np.float32)
    levels = quantization_range(nodes)
    return {
        "key pair": _p50(generate_key_pairs, repeats),
        "Shamir split, 32-byte seed": _p50(lambda: create_shares(seed, t, k), repeats),
        "Shamir split, 48-byte key": _p50(lambda: create_shares(key, t, k), repeats),
        "ECDH + HKDF": _p50(lambda: generate_shared_key(sk, pk), repeats),
        "Fernet encrypt": _p50(lambda: encrypt(shared, plaintext), repeats),
        "Fernet decrypt": _p50(lambda: decrypt(shared, ciphertext), repeats),
        "mask (pseudo_rand_gen)": _p50(lambda: pseudo_rand_gen(seed, MODULUS, [(values,)]), repeats),
        "quantise": _p50(lambda: quantize([vector], CLIPPING_RANGE, levels), repeats),
        "Shamir combine, t shares of the seed": _p50(lambda: combine_shares(seed_shares[:t]), repeats),
    }


def node_calls(k: int) -> dict[str, int]:
    """Calls of each primitive one node makes in one session with k - 1 neighbours (Flower's secaggplus_mod):
    the share keys stage agrees a key with each neighbour to encrypt its shares, the masked-input stage one to
    derive each pairwise mask; decryption reuses the first."""
    return {"key pair": 2, "Shamir split, 32-byte seed": 1, "Shamir split, 48-byte key": 1,
            "ECDH + HKDF": 2 * (k - 1), "Fernet encrypt": k - 1, "Fernet decrypt": k - 1,
            "mask (pseudo_rand_gen)": k, "quantise": 1}


#: Calls the server makes per surviving node in one session (server.secagg.SecureRound.unmask, no dropouts).
SERVER_CALLS = {"Shamir combine, t shares of the seed": 1, "mask (pseudo_rand_gen)": 1}
#: The primitives whose cost grows with the length of the masked vector.
PER_VALUE = ("mask (pseudo_rand_gen)", "quantise")


def _cost_ms(ms: dict[str, float], calls: dict[str, int], scale: float) -> float:
    return sum(n * ms[name] * (scale if name in PER_VALUE else 1.0) for name, n in calls.items())


def session_floor(ms: dict[str, float], nodes: int, k: int, masks_scale: float = 1.0) -> dict[str, float]:
    """Seconds of one SecAgg+ session, all nodes' work summed (one core), from per-call ms.

    masks_scale: the session's vector length over the one `ms` was timed at (masks and quantisation scale with it).
    """
    calls = node_calls(k)
    return {"nodes_s": nodes * _cost_ms(ms, calls, masks_scale) / 1e3,
            "server_s": nodes * _cost_ms(ms, SERVER_CALLS, masks_scale) / 1e3,
            "masks_s": nodes * masks_scale * calls["mask (pseudo_rand_gen)"] * ms["mask (pseudo_rand_gen)"] / 1e3,
            "agreements_s": nodes * calls["ECDH + HKDF"] * ms["ECDH + HKDF"] / 1e3}


def main(argv: list[str] | None = None) -> None:
    from common.federation.secagg import shares_and_threshold

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--values", type=int, default=330_000, help="packed values of the update (the bench's model: "
                   "10,000 items x 32 + the item biases and the dense parameters, about 330,000)")
    p.add_argument("--count-values", type=int, default=2, help="packed values of the user-count session")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--cores", type=int, default=2, help="cores the nodes' work can spread over (the server's is serial)")
    p.add_argument("--central-seconds", type=float, default=0.0,
                   help="a central-DP round measured by `fedctx bench` on this machine, to print the ratios")
    args = p.parse_args(argv)
    k, t = shares_and_threshold(args.nodes)
    ms = primitive_ms(args.values, args.nodes, k, t, args.repeats)
    for name, v in ms.items():
        print(f"{name:38s} {v:8.3f} ms")
    update = session_floor(ms, args.nodes, k)
    count = session_floor(ms, args.nodes, k, masks_scale=args.count_values / args.values)
    out = {"nodes": args.nodes, "k": k, "t": t, "values": args.values, "primitive_ms": ms,
           "update_session": update, "count_session": count}
    for name, sess in (("update session", update), ("user-count session", count)):
        print(f"{name}: nodes {sess['nodes_s']:.2f} s of work (masks {sess['masks_s']:.2f} s, key agreements "
              f"{sess['agreements_s']:.2f} s), server {sess['server_s']:.2f} s")
    for label, sessions in (("update session only", [update]), ("with the user count", [update, count])):
        serial = sum(s["nodes_s"] + s["server_s"] for s in sessions)
        spread = sum(s["nodes_s"] / args.cores + s["server_s"] for s in sessions)
        out[label] = {"one_core_s": serial, "spread_s": spread}
        line = f"{label}: at least {spread:.2f} s a round over {args.cores} cores ({serial:.2f} s on one)"
        if args.central_seconds > 0:
            ratio = (args.central_seconds + spread) / args.central_seconds
            out[label]["ratio_floor"] = ratio
            line += f"; a round of at least {ratio:.2f}x the central round's {args.central_seconds:.2f} s"
        print(line)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
