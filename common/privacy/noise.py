"""Noise and clipping: the cryptographically secure Gaussian, per-user clipping, the noisy mean, adaptive clipping's noise and step."""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.privacy.accounting import _check_clip, _check_z

__all__ = ["clip_factors", "SecureGaussian", "noisy_mean", "adaptive_sum_noise", "next_clip_norm"]


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
