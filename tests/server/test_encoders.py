"""Content encoders beside Word2Vec: precomputed vectors files and a pretrained sentence encoder.

The sentence encoder is tested on a tiny random BERT and a tiny WordPiece vocabulary built here (nothing is
downloaded); its output is compared with mean pooling computed independently, one text at a time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.federation.aggregation import ServerOptimizer
from common.config import Config, ConfigError
from server.checkpoint import ServerState, check_resumable, load_checkpoint, save_checkpoint
from server.content import (ContentError, SentenceEncoder, content_descriptor, content_vectors, item_content,
                            neighbour_mean, neighbours_for, read_precomputed)

IDS = np.array(["m1", "m2", "m3", "m4", "m5"])
TEXTS = ["toy story animation comedy", "heat action crime thriller", "sabrina comedy romance",
         "goldeneye action adventure", "casino drama crime"]
WORDS = sorted({w for t in TEXTS for w in t.split()} | {"story", "new", "film"})


# -- precomputed vectors -------------------------------------------------------------------------------------

def _vectors(n: int = 5, width: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width))


def _precomputed(path: Path, **changes) -> Config:
    """Settings reading `path` as it is (no standardisation, no neighbour smoothing) unless changed."""
    return Config(content_encoder="precomputed", content_path=str(path), content_standardize=False,
                  content_neighbours=1).replace(**changes)


@pytest.mark.parametrize("fmt", ["npz", "parquet-list", "parquet-columns"])
def test_precomputed_vectors_come_out_in_catalogue_order(tmp_path, fmt):
    vectors = _vectors()
    order = np.array([3, 0, 4, 1, 2])  # the file lists the items in another order, plus an item not in the catalogue
    ids = np.append(IDS[order], "extra")
    rows = np.vstack([vectors[order], np.full((1, 3), 9.0)])
    if fmt == "npz":
        path = tmp_path / "v.npz"
        np.savez(path, item_ids=ids, vectors=rows)
    elif fmt == "parquet-list":
        path = tmp_path / "v.parquet"
        pd.DataFrame({"item_id": ids, "vector": list(rows)}).to_parquet(path)
    else:
        path = tmp_path / "v.parquet"
        pd.DataFrame({"item_id": ids, **{f"d{j}": rows[:, j] for j in range(3)}}).to_parquet(path)
    h = content_vectors(_precomputed(path), TEXTS, IDS)
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, vectors, rtol=1e-6)
    # a new item is looked up in the same file
    content = item_content(_precomputed(path), TEXTS, IDS)
    np.testing.assert_allclose(content.encode(["an unknown film"], ["extra"]), np.full((1, 3), 9.0))


def test_precomputed_vectors_are_standardised_like_word2vec_by_default(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, item_ids=IDS, vectors=_vectors() * 7 + 3)
    h = content_vectors(_precomputed(path, content_standardize=True), TEXTS, IDS)
    np.testing.assert_allclose(h.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(h.std(axis=0), 1.0, atol=1e-5)


def test_a_wide_encoder_is_whitened_to_content_dims_and_new_items_follow(tmp_path):
    n, width, dims = 40, 12, 3
    ids = np.array([f"m{i}" for i in range(n)])
    texts = [f"text {i}" for i in range(n)]
    rng = np.random.default_rng(1)
    # three strong directions plus small noise: the whitened h(c) must keep exactly those three
    signal = rng.normal(size=(n, 3)) * np.array([9.0, 5.0, 3.0])
    raw = signal @ np.linalg.qr(rng.normal(size=(width, width)))[0][:3] + 0.01 * rng.normal(size=(n, width)) + 4.0
    path = tmp_path / "wide.npz"
    np.savez(path, item_ids=np.append(ids, "new"), vectors=np.vstack([raw, raw[:1] * 2]))
    content = item_content(_precomputed(path, content_dims=dims), texts, ids)
    h = content.h
    assert h.shape == (n, dims) and h.dtype == np.float32
    # unit variance, uncorrelated, centred: the covariance over the catalogue is the identity
    np.testing.assert_allclose(np.cov(h.T, bias=True), np.eye(dims), atol=1e-4)
    np.testing.assert_allclose(h.mean(axis=0), 0.0, atol=1e-5)
    # the three kept axes span the planted signal: a least-squares fit of the signal from h(c) is near exact
    coef, *_ = np.linalg.lstsq(h, signal - signal.mean(axis=0), rcond=None)
    residual = signal - signal.mean(axis=0) - h @ coef
    assert np.abs(residual).max() < 0.05 * np.abs(signal).max()
    # a catalogue item encoded again equals its row; a new item goes through the same transform
    np.testing.assert_allclose(content.encode(texts[:2], ids[:2]), h[:2], atol=1e-5)
    new = content.encode(["a new film"], ["new"])
    np.testing.assert_allclose(new, ((raw[:1] * 2 - content.centre) @ content.proj), rtol=1e-5)
    # an encoder no wider than content-dims is left as it is, and content-dims=0 keeps every dimension
    assert item_content(_precomputed(path, content_dims=width), texts, ids).h.shape == (n, width)
    assert item_content(_precomputed(path, content_dims=0), texts, ids).h.shape == (n, width)
    with pytest.raises(ConfigError, match="content-dims: must be >= 0"):
        Config(content_dims=-1)


def _brute_neighbour_mean(query, catalogue, k, own):
    """The documented rule one row at a time: the row itself plus its k - 1 most cosine-similar catalogue rows
    (its own catalogue row left out)."""
    out = []
    for q, o in zip(query, own):
        cos = [(-float(q @ c / np.linalg.norm(q) / np.linalg.norm(c)), j) for j, c in enumerate(catalogue) if j != o]
        chosen = [j for _, j in sorted(cos)[: k - 1]]
        out.append((q + catalogue[chosen].sum(axis=0)) / (1 + len(chosen)))
    return np.array(out)


def test_neighbour_mean_follows_the_rule_row_by_row():
    rng = np.random.default_rng(3)
    cat = rng.normal(size=(30, 5))
    for k in (1, 2, 4, 30):
        got = neighbour_mean(cat, cat, k, np.arange(30), block=7)  # blocks that do not divide the rows
        np.testing.assert_allclose(got, _brute_neighbour_mean(cat, cat, k, np.arange(30)), rtol=1e-5, atol=1e-6)
    new = rng.normal(size=(3, 5))
    np.testing.assert_allclose(neighbour_mean(new, cat, 4), _brute_neighbour_mean(new, cat, 4, [-1, -1, -1]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(neighbour_mean(cat, cat, 1, np.arange(30)), cat, rtol=1e-6)
    # k = n: every catalogue item becomes the catalogue's mean
    np.testing.assert_allclose(neighbour_mean(cat, cat, 30, np.arange(30)), np.tile(cat.mean(0), (30, 1)),
                               atol=1e-5)


def test_content_neighbours_smooth_the_catalogue_and_new_items_the_same_way(tmp_path):
    n, width, k = 24, 4, 5
    ids = np.array([f"m{i}" for i in range(n)])
    texts = [f"text {i}" for i in range(n)]
    raw = np.random.default_rng(2).normal(size=(n, width)) * 3 + 1
    new = raw[:2] + 0.5
    path = tmp_path / "v.npz"
    np.savez(path, item_ids=np.append(ids, ["n1", "n2"]), vectors=np.vstack([raw, new]))
    cfg = _precomputed(path, content_standardize=True, content_neighbours=k)
    content = item_content(cfg, texts, ids)
    z = (raw - raw.mean(0)) / raw.std(0)
    smooth = _brute_neighbour_mean(z, z, k, range(n))
    expected = (smooth - smooth.mean(0)) / smooth.std(0)
    np.testing.assert_allclose(content.h, expected, rtol=1e-4, atol=1e-5)
    assert content_descriptor(cfg)["neighbours"] == k != content_descriptor(cfg.replace(content_neighbours=1))[
        "neighbours"]
    # a catalogue item encoded again equals its row; a new one is smoothed over the catalogue with the same moments
    np.testing.assert_allclose(content.encode(texts[3:6], ids[3:6]), content.h[3:6], rtol=1e-4, atol=1e-5)
    zn = (new - raw.mean(0)) / raw.std(0)
    expected_new = (_brute_neighbour_mean(zn, z, k, [-1, -1]) - smooth.mean(0)) / smooth.std(0)
    np.testing.assert_allclose(content.encode(["a", "b"], ["n1", "n2"]), expected_new, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="content-neighbours: must be >= 0"):
        Config(content_neighbours=-1)
    # the default (0) takes 1% of the catalogue within [20, 100]: 20 of these 24 items
    auto = item_content(cfg.replace(content_neighbours=0), texts, ids)
    smooth20 = _brute_neighbour_mean(z, z, 20, range(n))
    np.testing.assert_allclose(auto.h, (smooth20 - smooth20.mean(0)) / smooth20.std(0), rtol=1e-4, atol=1e-5)
    assert auto.neighbours == 20


def test_the_default_neighbours_grow_with_the_catalogue_within_their_bounds():
    assert Config().content_neighbours == 0
    by_size = {n: neighbours_for(0, n) for n in (5, 24, 1_000, 1_682, 2_549, 5_000, 10_000, 100_000)}
    assert by_size == {5: 5, 24: 20, 1_000: 20, 1_682: 20, 2_549: 25, 5_000: 50, 10_000: 100, 100_000: 100}
    assert neighbours_for(1, 10_000) == 1 and neighbours_for(37, 10) == 37  # a setting is taken as it is


def test_a_catalogue_too_large_for_the_exact_neighbour_search_is_refused_with_the_fix(tmp_path, monkeypatch):
    import server.content

    path = tmp_path / "v.npz"
    np.savez(path, item_ids=IDS, vectors=_vectors())
    monkeypatch.setattr(server.content, "MAX_NEIGHBOUR_ITEMS", 4)
    with pytest.raises(ContentError, match="catalogue's 5 items.*--set content-neighbours=1"):
        item_content(_precomputed(path, content_neighbours=3), TEXTS, IDS)
    assert item_content(_precomputed(path, content_neighbours=1), TEXTS, IDS).h.shape == (5, 3)


def _write_bad(tmp_path: Path, case: str) -> Path:
    v = _vectors()
    if case == "missing item":
        path = tmp_path / "missing.npz"
        np.savez(path, item_ids=IDS[:4], vectors=v[:4])
    elif case == "NaN":
        v[2, 1] = np.nan
        path = tmp_path / "nan.npz"
        np.savez(path, item_ids=IDS, vectors=v)
    elif case == "mixed width":
        path = tmp_path / "mixed.parquet"
        pd.DataFrame({"item_id": IDS, "vector": [list(r) for r in v[:4]] + [[1.0, 2.0]]}).to_parquet(path)
    elif case == "duplicate ids":
        path = tmp_path / "dup.npz"
        np.savez(path, item_ids=np.append(IDS, "m2"), vectors=np.vstack([v, v[1:2]]))
    elif case == "npy without ids":
        path = tmp_path / "plain.npy"
        np.save(path, v)
    else:
        path = tmp_path / "wrong-names.npz"
        np.savez(path, ids=IDS, emb=v)
    return path


@pytest.mark.parametrize("case, rule, found", [
    ("missing item", "every catalogue item needs a vector", "missing items 1 ('m5')"),
    ("NaN", "every value must be finite", "items 1 ('m3')"),
    ("mixed width", "every vector must have one width", "widths [2, 3]; items off the common width: 1 ('m5')"),
    ("duplicate ids", "each item id must appear once", "duplicate ids 1 ('m2')"),
    ("npy without ids", "an .npy file holds no item ids", "an .npy file"),
    ("array names", "an .npz needs the arrays item_ids and vectors", "arrays ['emb', 'ids']"),
])
def test_a_bad_vectors_file_is_a_clear_error_naming_the_file_and_the_fix(tmp_path, case, rule, found):
    path = _write_bad(tmp_path, case)
    with pytest.raises(ContentError, match=f"^{re.escape(f'content-path: {path}: {rule}')}") as err:
        content_vectors(_precomputed(path), TEXTS, IDS)
    message = str(err.value)
    assert f"Found {found}" in message and "Fix: " in message
    assert isinstance(err.value, ConfigError)  # the command line reports it as a setting's error


def test_precomputed_needs_its_file():
    with pytest.raises(ConfigError, match="content-path: must name the vectors file"):
        Config(content_encoder="precomputed")
    with pytest.raises(ConfigError, match="content-encoder: must be one of"):
        Config(content_encoder="bert")


def test_read_precomputed_keeps_the_file_order(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, item_ids=np.array([5, 3]), vectors=np.eye(2))
    ids, vectors = read_precomputed(path)
    assert ids.tolist() == ["5", "3"]  # ids are matched as text, like the catalogue's
    np.testing.assert_array_equal(vectors, np.eye(2))


# -- the sentence encoder on a tiny model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 8) with a WordPiece vocabulary of this file's words, saved as a model
    directory: tf_model.h5, config.json and the tokenizer files."""
    from server.content import _import_transformers

    _import_transformers()  # a plain first import of transformers' TF classes would break tf.keras (see below)
    from transformers import BertConfig, BertTokenizerFast, TFBertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(str(path))
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)
    model = TFBertModel(config)
    model(model.dummy_inputs)
    model.save_pretrained(str(path))
    return path


def _reference_mean_pooling(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Each text alone (no padding): [CLS] words [SEP] through the model, the mean of all its token states,
    divided by its norm."""
    from transformers import TFBertModel

    model = TFBertModel.from_pretrained(str(model_dir))
    vocab = (model_dir / "vocab.txt").read_text().split("\n")
    out = []
    for text in texts:
        ids = [vocab.index("[CLS]")] + [vocab.index(w) for w in text.split()] + [vocab.index("[SEP]")]
        states = model(input_ids=np.array([ids]), training=False).last_hidden_state.numpy()[0]
        mean = states.mean(axis=0)
        out.append(mean / np.sqrt((mean ** 2).sum()))
    return np.array(out)


def test_sentence_encoder_is_mean_pooling_with_l2_normalisation(tiny_model):
    texts = TEXTS + ["story", "new film new film new film"]  # several lengths: batches with padding
    enc = SentenceEncoder(tiny_model, batch=3)
    h = enc.encode(texts)
    assert h.shape == (len(texts), 8) and h.dtype == np.float32
    np.testing.assert_allclose(h, _reference_mean_pooling(tiny_model, texts), atol=1e-5)


def test_sentence_encoder_reads_a_pytorch_safetensors_checkpoint_without_torch(tiny_model, tmp_path):
    """The usual published form of such models (sentence-transformers' model.safetensors) holds PyTorch names
    and [out, in] kernels; it is converted in memory and gives the same vectors."""
    from safetensors.numpy import save_file
    from transformers import TFBertModel
    from transformers.modeling_tf_pytorch_utils import convert_tf_weight_name_to_pt_weight_name

    model = TFBertModel.from_pretrained(str(tiny_model))
    state = {}
    for w in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(w.name, "bert.", tf_weight_shape=w.shape)
        value = w.numpy()
        state[name] = np.ascontiguousarray(value.T if transpose.name == "SIMPLE" else value)
    pt_dir = tmp_path / "pt"
    pt_dir.mkdir()
    for f in tiny_model.iterdir():
        if f.name != "tf_model.h5":
            (pt_dir / f.name).write_bytes(f.read_bytes())
    save_file(state, str(pt_dir / "model.safetensors"), metadata={"format": "pt"})
    texts = TEXTS[:3]
    np.testing.assert_allclose(SentenceEncoder(pt_dir).encode(texts), SentenceEncoder(tiny_model).encode(texts),
                               atol=1e-6)


def test_new_items_are_encoded_like_the_catalogue(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCTX_CACHE", str(tmp_path / "cache"))
    for cfg in (Config(content_encoder="sentence-encoder", content_model=str(tiny_model)),
                Config(text_dim=4, text_epochs=2)):
        content = item_content(cfg, TEXTS, IDS)
        # a catalogue item (known by its id: its own row is not its neighbour) encodes to its row
        np.testing.assert_allclose(content.encode(TEXTS[1:3], IDS[1:3]), content.h[1:3], atol=1e-5)
        new = content.encode(["new film story"])
        assert new.shape == (1, content.width) and np.isfinite(new).all()


def test_the_width_of_h_is_the_encoders(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCTX_CACHE", str(tmp_path / "cache"))
    assert content_vectors(Config(content_encoder="sentence-encoder", content_model=str(tiny_model),
                                  text_dim=64), TEXTS, IDS).shape == (5, 8)
    assert content_vectors(Config(text_dim=6, text_epochs=2), TEXTS, IDS).shape == (5, 6)


def test_h_is_cached_by_catalogue_and_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCTX_CACHE", str(tmp_path / "cache"))
    cfg = Config(text_dim=4, text_epochs=2, content_neighbours=1)
    first = content_vectors(cfg, TEXTS, IDS)
    files = sorted((tmp_path / "cache" / "content").iterdir())
    assert len(files) == 1
    np.save(files[0], np.load(files[0]) + 1.0)  # a cache hit is read, not recomputed: the shift cancels out
    np.testing.assert_allclose(content_vectors(cfg, TEXTS, IDS), first, atol=1e-5)
    content_vectors(cfg.replace(text_window=2), TEXTS, IDS)  # another setting that shapes h(c): another entry
    content_vectors(cfg, TEXTS[::-1], IDS[::-1])              # another catalogue: another entry
    assert len(list((tmp_path / "cache" / "content").iterdir())) == 3
    content_vectors(cfg.replace(content_neighbours=3), TEXTS, IDS)  # the encoder's output is shared: only the means
    assert len(list((tmp_path / "cache" / "content").glob("h-*.npy"))) == 3


def test_the_neighbour_means_are_cached_with_the_vectors_they_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCTX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "v.npz"
    np.savez(path, item_ids=IDS, vectors=_vectors())
    cfg = _precomputed(path, content_neighbours=3)
    first = content_vectors(cfg, TEXTS, IDS)
    [cached] = (tmp_path / "cache" / "content").glob("neighbours-*.npy")
    np.save(cached, np.load(cached) * 0 + np.arange(3.0))  # a hit is read, not recomputed
    np.testing.assert_allclose(content_vectors(cfg, TEXTS, IDS), np.tile(np.arange(3.0), (5, 1)))
    np.savez(path, item_ids=IDS, vectors=_vectors(seed=1))  # other vectors under the same path: recomputed
    again = content_vectors(cfg, TEXTS, IDS)
    assert not np.allclose(again, np.arange(3.0)) and not np.allclose(again, first)
    assert len(list((tmp_path / "cache" / "content").glob("neighbours-*.npy"))) == 2


def test_a_model_name_that_cannot_be_had_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = Config(content_encoder="sentence-encoder", content_model="no-such-org/no-such-model")
    with pytest.raises(ContentError, match="is no local directory and could not be downloaded.*Fix: give the path"):
        content_descriptor(cfg)
    with pytest.raises(ContentError, match="is not a model directory"):
        content_descriptor(cfg.replace(content_model=str(tmp_path / "nothing-here")))


# -- the descriptor and resumed runs ------------------------------------------------------------------------

def test_the_descriptor_names_the_encoder_its_files_and_settings(tiny_model, tmp_path):
    w2v = content_descriptor(Config())
    assert w2v["encoder"] == "word2vec" and w2v["text_dim"] == 64 and w2v["sha256"] is None
    se = content_descriptor(Config(content_encoder="sentence-encoder", content_model=str(tiny_model)))
    assert se["encoder"] == "sentence-encoder" and se["model"] == str(tiny_model)
    assert len(se["sha256"]) == 64 and se["pooling"] == "mean" and se["max_length"] == 256
    assert json.loads(json.dumps(se)) == se
    assert content_descriptor(Config(content_encoder="sentence-encoder", content_model=str(tiny_model),
                                     content_max_length=16)) != se
    # the hash covers the model files: other weights under the same path give another descriptor
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_model.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    same = content_descriptor(Config(content_encoder="sentence-encoder", content_model=str(copy)))
    assert same["sha256"] == se["sha256"]
    (copy / "tf_model.h5").write_bytes((copy / "tf_model.h5").read_bytes() + b"\0")
    assert content_descriptor(Config(content_encoder="sentence-encoder", content_model=str(copy)))["sha256"] \
        != se["sha256"]


def _state(cfg: Config, content: dict) -> ServerState:
    return ServerState(round=2, params={"w": np.zeros(2)}, optimizer=ServerOptimizer("adam", 0.1),
                       config=cfg.to_flwr(), content=content)


def test_a_resume_with_vectors_from_another_encoder_is_refused(tmp_path):
    vectors = tmp_path / "v.npz"
    np.savez(vectors, item_ids=IDS, vectors=_vectors())
    cfg = _precomputed(vectors, num_rounds=4, run_dir=str(tmp_path))
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _state(cfg.replace(num_rounds=2), content_descriptor(cfg)))
    state = load_checkpoint(path)
    assert state.content == content_descriptor(cfg)
    check_resumable(state, cfg.replace(resume=True), path)  # same file: goes on
    np.savez(vectors, item_ids=IDS, vectors=_vectors(seed=1))  # same path and settings, other vectors
    with pytest.raises(ConfigError, match="from another content encoder .*sha256="):
        check_resumable(state, cfg.replace(resume=True), path)
    with pytest.raises(ConfigError, match="content-encoder='precomputed' there, 'word2vec' here"):
        check_resumable(state, Config(num_rounds=4, run_dir=str(tmp_path), resume=True), path)


def test_the_sentence_encoder_leaves_tf_keras_to_keras_2(tiny_model):
    """Importing transformers' TF classes sets TF_USE_LEGACY_KERAS=1, which breaks tf.keras (and every process
    started later, e.g. Flower's nodes) without the tf_keras package; the encoder puts the variable back."""
    import os
    import subprocess
    import sys

    code = ("import os; from server.content import SentenceEncoder; SentenceEncoder(os.environ['MODEL']); "
            "import tensorflow as tf; tf.keras.optimizers.Adam(0.1); "
            "assert 'TF_USE_LEGACY_KERAS' not in os.environ, os.environ['TF_USE_LEGACY_KERAS']; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, "MODEL": str(tiny_model), "TF_CPP_MIN_LOG_LEVEL": "3"},
                         cwd=Path(__file__).resolve().parents[2])
    assert res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_cold_start_users_are_those_whose_test_item_nobody_trained_on():
    from common.federation.users import UserStore
    from simulations.simulate import cold_test_users

    # user 0 trained on items 0, 1; user 1 on item 2. Test items: 2 (user 1 engaged with it), 5 (nobody did)
    store = UserStore(user_keys=np.array(["a", "b"]), offsets=np.array([0, 2, 3]), items=np.array([0, 1, 2]),
                      age_days=np.zeros(3), ctx=np.zeros((3, 0)), val_item=np.array([5, 0]), val_ctx=np.zeros((2, 0)),
                      test_item=np.array([2, 5]), test_ctx=np.zeros((2, 0)))
    assert cold_test_users(store).tolist() == [False, True]  # a validation engagement (user 0's 5) is no training
