"""(De)serialisation of named parameter arrays to Flower ArrayRecords."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["to_record", "from_record"]


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """{name: array} -> ArrayRecord (float32, names kept in order)."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v, np.float32))) for k, v in arrays.items()))


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: float32 array}."""
    return {k: np.asarray(v.numpy(), np.float32) for k, v in record.items()}
