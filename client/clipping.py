"""The node's clipping step: each sampled user's whole update is clipped to the round's C before the node sums
them (user-level DP-FedAvg's ClipFn, McMahan et al. 2018; also SecAgg+'s public bound on every packed value). It
plays the part of Flower's fixedclipping_mod, per user rather than per node: a node sends the sum over its users."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.federation.updates import UserUpdates
from common.privacy.noise import clip_factors

__all__ = ["UserClipping", "clip_users"]


@dataclass(frozen=True)
class UserClipping:
    """scale [U]: each user's factor min(1, C / norm) for UserUpdates.total; shifted_count: with adaptive clipping,
    the sum over the users of 1[norm <= C] - 1/2 (sensitivity 1/2; the server noises it), else None."""

    scale: np.ndarray
    shifted_count: float | None = None


def clip_users(updates: UserUpdates, clip_norm: float, count_unclipped: bool = False) -> UserClipping:
    """Clip every user's whole shared-parameter update to L2 norm `clip_norm`; count_unclipped (adaptive
    clipping): also the shifted count of the users whose update was not clipped."""
    norms = updates.norms()
    scale = clip_factors(norms, clip_norm)
    if not count_unclipped:
        return UserClipping(scale)
    return UserClipping(scale, float((norms <= clip_norm).sum() - 0.5 * len(norms)))
