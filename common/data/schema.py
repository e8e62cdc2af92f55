"""The public schema: everything a node needs to encode its own data, and nothing the server could not know.

The server builds it from public inputs only (the item catalogue, the context declaration, the content
encoder's settings) and sends it to every node with h(c); its hash travels in every round's config. Nodes
never fit an item index or a context encoder of their own: a device that saw one `device` value encodes its
rows with the same features (19 on the seed case), in the same order, as every other device.

- item_ids [n_items]: the catalogue order (item index i is item_ids[i]);
- context: a ContextEncoder with fixed vocabularies, scales and width;
- content: a JSON-able descriptor of the encoder that made h(c) (`server.content.content_descriptor`);
- content_digest: sha256 of h(c) [n_items, text_dim] float32, so nodes and resumed runs never mix vectors.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.config import PrivacyMode
from common.data.context import ContextEncoder
from common.data.spec import DataError, DatasetSpec
from common.errors import FedctxError
from common.io import write_atomic

__all__ = ["PublicSchema", "SCHEMA_FILE", "build_schema", "content_digest", "declared_context",
           "fitted_declaration", "FITTED_KEY", "SchemaMismatch"]

SCHEMA_FILE = "schema.json"
#: Key of a declaration file fitted on users' interactions without noise (`fedctx data declare`, a non-private
#: simulation): its vocabularies, scales and width are exact functions of private rows, so a run with a privacy
#: mode refuses it (its schema.json and model shapes are released).
FITTED_KEY = "fitted-on-private-rows"
_DECLARE_FIX = ("declare values = [...] for each categorical column and mean/std for each numeric column in "
                "dataset.toml's [context] (from public knowledge: the product's list of devices, a published "
                "range), or pass context-declaration=<a JSON declaration you write from public knowledge, "
                "docs/deployment.md>")
_FORMAT = "fedctx.public-schema"
_VERSION = 1


class SchemaMismatch(FedctxError, RuntimeError):
    """A node's stored schema or data does not fit the server's schema."""


def content_digest(item_h: np.ndarray) -> str:
    """sha256 of h(c) as little-endian float32 (shape included)."""
    h = np.ascontiguousarray(item_h, dtype="<f4")
    return hashlib.sha256(repr(h.shape).encode() + h.tobytes()).hexdigest()


@dataclass(frozen=True)
class PublicSchema:
    """See the module docstring. `hash` identifies all of it (hex sha256 of the canonical JSON)."""

    item_ids: tuple[str, ...]
    context: ContextEncoder
    content: Mapping[str, Any]
    content_digest: str
    hash: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", hashlib.sha256(self._canonical().encode()).hexdigest())

    def _body(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, "item_ids": list(self.item_ids),
                "context": self.context.to_dict(), "content": dict(self.content),
                "content_digest": self.content_digest}

    def _canonical(self) -> str:
        return json.dumps(self._body(), sort_keys=True, separators=(",", ":"))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def context_dim(self) -> int:
        return self.context.dim

    def to_json(self) -> str:
        """The schema as JSON, written once per instance (a node serialises it with every message it answers)."""
        text = self.__dict__.get("_json")
        if text is None:
            text = json.dumps({**self._body(), "hash": self.hash})
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    @functools.lru_cache(maxsize=4)
    def from_json(cls, text: str) -> "PublicSchema":
        """Inverse of to_json; raises SchemaMismatch if the text is not a schema or its hash does not match.
        The same text gives the same instance (shared across the process: never modify it), since a node parses its
        schema for every message."""
        try:
            d = json.loads(text)
            if d.get("format") != _FORMAT or d.get("version") != _VERSION:
                raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
            schema = cls(tuple(str(i) for i in d["item_ids"]), ContextEncoder.from_dict(d["context"]),
                         d["content"], str(d["content_digest"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaMismatch(f"not a {_FORMAT} v{_VERSION} document: {exc}") from None
        if d.get("hash") not in (None, schema.hash):
            raise SchemaMismatch(f"schema hash {d.get('hash')} does not match its content ({schema.hash})")
        return schema

    def write(self, path: Path) -> Path:
        """to_json() to path, atomically (common.io.write_atomic)."""
        return write_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> "PublicSchema":
        return cls.from_json(Path(path).read_text())


def build_schema(item_ids, context: ContextEncoder, content: Mapping[str, Any], item_h: np.ndarray) -> PublicSchema:
    """The schema of a catalogue (item_ids [n_items]) and its h(c) [n_items, text_dim]."""
    if len(item_ids) != len(item_h):
        raise ValueError(f"{len(item_ids)} item ids but {len(item_h)} content vectors")
    return PublicSchema(tuple(str(i) for i in item_ids), context, dict(content), content_digest(item_h))


def fitted_declaration(encoder: ContextEncoder) -> str:
    """The JSON text of a declaration fitted on interactions without noise, marked as such (FITTED_KEY)."""
    return json.dumps({**encoder.to_dict(), FITTED_KEY: True}, sort_keys=True, indent=1)


def declared_context(spec: DatasetSpec, declaration: str = "", privacy: PrivacyMode = "none") -> ContextEncoder:
    """The context encoder the server publishes: from the `declaration` file (JSON, as written by
    `fedctx data declare` or by hand) if given, else from dataset.toml's [context] table, which must then fix
    every categorical column's `values` and every numeric column's `mean` and `std`. Under a privacy mode
    (`privacy`: cfg.privacy, named in the messages; other than "none") a declaration marked as fitted on private
    rows is refused."""
    private = privacy != "none"  # as Config.private
    toml = spec.root / "dataset.toml"
    if declaration:
        path = Path(declaration)
        try:
            document = json.loads(path.read_text())
            encoder = ContextEncoder.from_dict(document)
        except OSError as exc:
            raise DataError(path, "the context declaration must be a readable file", value=str(exc),
                            fix="pass the file written by `fedctx data declare`") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(path, "the context declaration must be a fedctx context-encoder JSON document",
                            value=str(exc), fix="write it with `fedctx data declare DATASET --out FILE`") from None
        want = [(c.name, c.kind) for c in spec.context_columns]
        got = [(c.name, c.kind) for c in encoder.columns]
        if want != got or tuple(spec.from_time) != encoder.from_time:
            raise DataError(path, "the context declaration must declare the columns of dataset.toml",
                            value={"declaration": got + list(encoder.from_time),
                                   "dataset.toml": want + list(spec.from_time)},
                            fix="write the declaration again from this dataset (`fedctx data declare`)")
        if private and document.get(FITTED_KEY):
            raise DataError(path, f"under privacy={privacy} the context declaration must come from public "
                            "knowledge, not be fitted on users' interactions without noise (its vocabularies, "
                            "scales and width are released in schema.json and shape global_model.npz, so one "
                            "user's rare value would show)", value={FITTED_KEY: True}, fix=_DECLARE_FIX)
        return encoder
    if private and spec.fitted:
        raise DataError(toml, f"under privacy={privacy} the context declaration must come from public knowledge, "
                        "not be fitted on users' interactions without noise", value={FITTED_KEY: True},
                        fix=_DECLARE_FIX + ", then remove fitted-on-private-rows")
    try:
        return ContextEncoder.declared(spec.context_columns, spec.from_time, spec.harmonics)
    except ValueError as exc:
        raise DataError(toml, "the server publishes the context schema, so dataset.toml must fix it", value=str(exc),
                        fix=_DECLARE_FIX + ("" if private else "; without a privacy mode also a file "
                                            "written by `fedctx data declare DATASET`")) from None
