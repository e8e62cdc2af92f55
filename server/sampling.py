"""User sampling, owned by the server: every round's Poisson rate q goes to all nodes, and each node gets its own
sampling seed of that round only, derived from the run's secret `SamplingKey`; a node applies it to its own users
with `common.privacy.sampling.poisson_sample`, so it learns whether its own users are sampled, never another node's."""

from __future__ import annotations

from dataclasses import dataclass

from common.privacy.sampling import SamplingKey

__all__ = ["UserSampling", "RoundSeeds"]


@dataclass(frozen=True)
class RoundSeeds:
    """The sampling seeds of one training round (`attempt` > 0: a round begun before a resume, sampled afresh)."""

    key: SamplingKey
    round: int
    attempt: int = 0

    def node_seed(self, node_id: int) -> int:
        """Node `node_id`'s seed (SamplingKey.round_seed with the node). With a test-only (public) key every node
        gets the round's common seed, so that a user is sampled alike whichever node holds it (the simulation tests
        that compare partitionings and resumes)."""
        return self.key.round_seed(self.round, self.attempt, node_id if self.key.secret else None)


@dataclass(frozen=True)
class UserSampling:
    """rate: q; key: the run's secret; replayed_until, attempt: the rounds up to `replayed_until` had begun before
    this resume (start `attempt`): their samples are fresh (SamplingKey.round_seed(r, attempt)) and their ledger
    rows are replays."""

    rate: float
    key: SamplingKey
    replayed_until: int = 0
    attempt: int = 0

    def replayed(self, server_round: int) -> bool:
        """The round had begun before this resume (a fresh sample, accounted again)."""
        return server_round <= self.replayed_until

    def seeds(self, server_round: int) -> RoundSeeds:
        """The seeds of training round `server_round`."""
        return RoundSeeds(self.key, server_round, self.attempt if self.replayed(server_round) else 0)
