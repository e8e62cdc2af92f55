"""Run a whole experiment on one machine: a real Flower simulation plus the baselines, and the report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from common.config import Config, ConfigError
from common.data.context import ContextEncoder
from common.data.loader import read_spec
from common.data.schema import declared_context, fitted_declaration
from common.errors import SERVER_ERROR_ENV, raise_recorded
from common.data.datasets import cache_dir, load_cached, resolve_dataset
from common.federation.users import UserStore
from common.evaluation.evaluate import context_averaged_scorer, evaluate_scores, evaluate_users
from common.privacy.sampling import training_members
from common.io import write_atomic
from simulations.rigs.raycluster import alive_nodes, check_shared_paths, connect, ray_init_args
from common.privacy.release import RELEASED_FILES, diagnostics_dir
from common.evaluation.report import SYSTEMS, plot_rounds, results_table

__all__ = ["PROJECT_ROOT", "run_flower_simulation", "run_baselines", "ceiling_rankings", "planted_store_inputs", "twin_hits", "simulate", "simulation_inputs",
           "cold_test_users"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def simulation_inputs(cfg: Config) -> Config:
    """What the experimenter gives the server of a simulation, as a deployment's operator would: the context
    declaration and N, the number of training users. The server itself reads only the catalogue.

    When dataset.toml does not fix the declaration: without a privacy mode it is fitted on the training rows
    (marked as such, content-addressed under the cache dir); under a privacy mode it is refused (schema.json and
    the model's shapes are released, and a fit on private rows without noise would show one user's rare value).
    """
    path = resolve_dataset(cfg)
    changes: dict = {}
    if not cfg.context_declaration:
        spec = read_spec(path)
        try:
            ContextEncoder.declared(spec.context_columns, spec.from_time, spec.harmonics)
        except ValueError:  # incomplete: fitted below without privacy, refused with it (same message as a server)
            if cfg.private:
                declared_context(spec, "", cfg.privacy)
            text = fitted_declaration(load_cached(str(path)).context_encoder)
            target = cache_dir() / "declarations" / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"
            if not target.is_file():
                write_atomic(target, text)
            changes["context_declaration"] = str(target)
    if not cfg.population:
        ds = load_cached(str(path))
        changes["population"] = int(training_members(np.asarray(ds.user_ids).astype(str), cfg.audit_fraction,
                                                     cfg.seed).sum())
    return cfg.replace(**changes) if changes else cfg


def _stop_on_signals(flag: Path) -> None:
    """SIGINT/SIGTERM ask the ServerApp to stop before its next round (common.errors.stop_requested); a second
    signal ends the process at once."""
    def handler(signum, frame) -> None:
        if flag.exists():
            print("fedctx: second signal, stopping now", file=sys.stderr, flush=True)
            os._exit(130)
        flag.write_text(signal.Signals(signum).name)
        print(f"fedctx: {signal.Signals(signum).name}: stopping after the current round (again to stop at once)",
              file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)


def _apps():
    """The ServerApp and the ClientApp, imported in the calling thread before Flower starts any thread of its own.

    Given as module:attribute strings instead, Flower's engine checks the ClientApp's module by parsing its source
    with `ast` (flwr.common.object_ref.validate) in the main thread while the ServerApp thread already runs, and
    TensorFlow there converts functions with autograph, which parses with `ast` too; on CPython 3.11 two threads
    building AST objects at once can fail with "SystemError: AST constructor recursion depth mismatch"
    (python/cpython#106905). Loaded objects are never parsed (docs/architecture.md, "Tests that cannot fail by
    chance"). The objects reach Ray's workers as references to these modules, as before."""
    from client.app import app as client_app
    from server.app import app as server_app

    return server_app, client_app


def run_flower_simulation(cfg: Config, num_nodes: int, verbose: bool = False) -> dict:
    """Run the ServerApp and ClientApp of this project in Flower's simulation engine (Ray backend).

    Each of `num_nodes` SuperNodes holds a contiguous shard of the users; settings reach both
    apps through Flower's run config ([tool.flwr.app.config] fused with `cfg`), after
    `simulation_inputs` has filled in the context declaration and N. Ray is a local one, or the cluster at
    `ray-address` (simulations.rigs.raycluster). Returns {"ray-address", "ray-nodes", "ray-cpus"}: where it ran.
    """
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.telemetry import EventType
    from flwr.common.typing import Run
    from flwr.simulation.run_simulation import _run_simulation

    from client.app import NODE_THREADS_ENV

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _check_secagg_nodes(cfg, num_nodes)
    cfg = simulation_inputs(cfg.replace(loss=cfg.model_loss))  # one federation, one model (`simulate` chooses first)
    if cfg.secure_aggregation and not cfg.secagg_max_users:  # the largest shard (client.node.build_store)
        cfg = cfg.replace(secagg_max_users=-(-load_cached(str(resolve_dataset(cfg))).n_users // num_nodes))
    overrides = cfg.to_flwr()
    run = Run.create_empty(int(time.time() * 1000) % (2**62))
    run.override_config = overrides
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=get_fused_config_from_dir(PROJECT_ROOT, overrides))
    cpus = os.cpu_count() or 1
    # Ray runs one actor per CPU; the ClientApp reads this and gives its TensorFlow one thread (see
    # client/app.py). Left at TF's default (a pool per core in every actor) the actors oversubscribe the
    # cores: rounds measured 3-4x slower on 2 cores. Ray's workers get the variable (simulations.rigs.raycluster).
    os.environ.setdefault(NODE_THREADS_ENV, "1")
    # one actor per CPU of every alive Ray node: on a cluster (ray-address) the shards' messages run on all nodes.
    # Ray is started (or joined) here; Flower's backend reads init_args only when Ray is not running yet
    init_args = ray_init_args(cfg.ray_address, cpus, verbose)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {k: v for k, v in init_args.items() if k != "runtime_env"}}
    fd, error_file = tempfile.mkstemp(prefix="fedctx-server-", suffix=".json")
    os.close(fd)
    os.environ[SERVER_ERROR_ENV] = error_file  # the ServerApp (a thread of this process) writes its error here
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    shared: dict[str, str] = {}
    import ray

    try:
        if not ray.is_initialized():  # started here, not by Flower's backend: Ray installs its own SIGTERM
            connect(cfg.ray_address, cpus, verbose)  # handler, which ours must replace
        nodes = alive_nodes()
        placement = {"ray-address": cfg.ray_address or "local", "ray-nodes": len(nodes),
                     "ray-cpus": int(sum(n["CPU"] for n in nodes))}
        if cfg.ray_address:  # the actors of every node read the dataset and write the devices' state themselves
            shared = _shared_paths(cfg)
            check_shared_paths(shared)
        _stop_on_signals(Path(error_file + ".stop"))
        server_app, client_app = _apps()
        _run_simulation(
            num_supernodes=num_nodes, server_app=server_app, client_app=client_app,
            backend_name="ray", backend_config=backend, app_dir=str(PROJECT_ROOT), run=run,
            server_app_context=context, verbose_logging=verbose, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE, is_app=True,
        )
        raise_recorded(Path(error_file))
    finally:
        if ray.is_initialized():  # Flower shuts Ray down when the run ends normally (on a cluster: disconnects)
            ray.shutdown()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        os.environ.pop(SERVER_ERROR_ENV, None)
        Path(error_file).unlink(missing_ok=True)
        Path(error_file + ".stop").unlink(missing_ok=True)
        if "run-dir" in shared:
            Path(shared["run-dir"]).unlink(missing_ok=True)
    return placement


def _check_secagg_nodes(cfg: Config, num_nodes: int) -> None:
    """Secure aggregation needs 2 nodes, and 3 unless its two-node weakness is accepted."""
    if cfg.secure_aggregation and num_nodes < 2:
        raise ConfigError(f"secure-aggregation: needs at least 2 nodes (the sum over one node is its update); "
                          f"got --nodes {num_nodes}. Use --nodes 2 or more.")
    if cfg.secure_aggregation and num_nodes == 2 and not cfg.secagg_accept_two_nodes:
        raise ConfigError("secure-aggregation: with --nodes 2 each node has a single neighbour, and Flower's 32-bit "
                          "mask seed (flwrlabs/flower#7522) lets the server recover each node's vector by trying "
                          "all 2^32 seeds (about 2 hours on one core). Use --nodes 3 or more, or accept it with "
                          "--set secagg-accept-two-nodes=true.")


def _shared_paths(cfg: Config) -> dict[str, str]:
    """{setting: path} that every Ray node must see as the driver does: the dataset, and the run directory (a
    probe file written now) where simulated devices keep theta_u between rounds (any actor serves any shard)."""
    paths = {"data": str(resolve_dataset(cfg))}
    if cfg.run_dir:
        probe = Path(cfg.run_dir) / f".ray-probe-{os.getpid()}"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(os.urandom(32))
        paths["run-dir"] = str(probe)
    return paths


def _summarise(m: dict[str, np.ndarray], k: int, cold: np.ndarray) -> dict[str, float]:
    """Per-user metrics -> the means reported for a system; cold [users] marks the users whose test item no
    training user engaged with (its HR@k is `hr@k-cold`, None when there is no such user)."""
    return {f"hr@{k}": float(m["hr"].mean()), f"ndcg@{k}": float(m["ndcg"].mean()),
            f"hr@{k}-sampled": float(m["hr-sampled"].mean()), f"ndcg@{k}-sampled": float(m["ndcg-sampled"].mean()),
            f"hr@{k}-cold": float(m["hr"][cold].mean()) if cold.any() else None, "cold_users": int(cold.sum())}


def cold_test_users(store: UserStore) -> np.ndarray:
    """[n_users] bool: the user's test item is an item that no user of the store engaged with in training."""
    return ~np.isin(store.test_item, store.items)


def run_baselines(cfg: Config, say: Callable[[str], None] = print, run_dir: Path | None = None) -> tuple[dict, dict]:
    """Centralized model, context-free centralized model, implicit ALS and BPR (if installed) and most-popular,
    on the same split. On the embedded generator's data also the ceiling rows and every model's expected HR@k
    from the planted truth (with run_dir, a finished simulation's, the federated model's last round too).

    Returns ({system: test metrics}, {system: seconds}).
    """
    from common.evaluation.ceiling import expected_hits
    from common.evaluation.central import popularity_scores
    from common.evaluation.collaborative import implicit_available, implicit_baselines
    from server.content import content_vectors

    ds = load_cached(str(resolve_dataset(cfg)))
    item_h = content_vectors(cfg, ds.item_texts, ds.item_ids)  # the server's h(c) (from the cache it filled)
    k = cfg.top_k
    members = np.flatnonzero(training_members(np.asarray(ds.user_ids).astype(str), cfg.audit_fraction, cfg.seed))
    systems, timings, per_user, scorers = {}, {}, {}, {}
    for name, c in (("centralized", cfg), ("context-free", cfg.replace(use_context=False))):
        store = UserStore.from_prepared(ds, members, use_context=c.use_context)
        t0 = time.perf_counter()
        params, theta, epoch_s, selected = central_system(name, c, store, item_h, say)
        per_user[name] = evaluate_users(params, theta, store, item_h, c, "test")
        systems[name] = {**_summarise(per_user[name], k, cold_test_users(store)), "selected_epoch": selected}
        timings[f"{name}_total_s"] = time.perf_counter() - t0
        timings[f"{name}_epoch_s"] = float(np.mean(epoch_s))
        scorers[name] = model_scorer(params, theta, store, item_h)
    store = UserStore.from_prepared(ds, members, use_context=False)
    cold = cold_test_users(store)
    if implicit_available():
        found, found_t = implicit_baselines(store, ds.n_items, cfg, lambda m: _summarise(m, k, cold), say)
        systems.update(found)
        timings.update(found_t)
    else:
        say("als, bpr: skipped (the optional package `implicit` is not installed: pip install 'fedctx[eval]')")
    pop = popularity_scores(store, ds.n_items)
    scorers["popularity"] = lambda users: np.broadcast_to(pop, (len(users), ds.n_items))
    systems["popularity"] = _summarise(evaluate_scores(scorers["popularity"], store, ds.n_items, cfg, "test"), k, cold)
    if cfg.data == "synthetic":  # the generator's truth is known: the ceiling of this data
        t0 = time.perf_counter()
        store_ctx, ceiling_scores = ceiling_rankings(cfg, ds, members)
        last = last_round_model(cfg, run_dir, store_ctx) if run_dir is not None else None
        if last is not None:  # the federated row's expected HR: its last round (devices keep their latest theta_u)
            scorers = {"federated": model_scorer(last[0], last[1], store_ctx, item_h), **scorers}
            systems["federated"] = {"expected_round": last[2]}
        ceiling = {name: evaluate_scores(score, store_ctx, ds.n_items, cfg, "test")
                   for name, score in ceiling_scores.items()}
        systems.update({name: _summarise(m, k, cold) for name, m in ceiling.items()})
        per_user.update(ceiling)
        expected = {name: expected_hits(score, ceiling_scores["oracle"], store_ctx, k)
                    for name, score in {**scorers, **ceiling_scores}.items()}
        for name, hits in expected.items():
            systems[name].update(expected_summary(hits, k))
        timings["ceiling_s"] = time.perf_counter() - t0
    else:
        expected = {}
    if "federated" in expected and cfg.use_context:  # its own context-free twins: the user's training contexts
        twins = twin_hits(last[0], last[1], store_ctx, item_h, ceiling_scores["oracle"], k)
        for average, key in (("logits", "expected_context_gain"), ("probabilities", "expected_context_gain_mixture")):
            systems["federated"][key] = paired_difference(expected["federated"], twins[average])
    for aware, free in (("centralized", "context-free"), ("structure", "structure-context-free")):
        if aware in per_user and free in per_user and cfg.use_context:
            systems[aware]["context_gain"] = paired_difference(per_user[aware]["hr"], per_user[free]["hr"])
        if aware in expected and free in expected and cfg.use_context:
            systems[aware]["expected_context_gain"] = paired_difference(expected[aware], expected[free])
    return systems, timings


def central_system(name: str, cfg: Config, store: UserStore, item_h: np.ndarray, say: Callable[[str], None]
                   ) -> tuple[dict, np.ndarray, list[float], int]:
    """Train the centralized model `name` (cfg.model_loss) on store, kept at its best validation epoch.

    Returns (shared params, theta [U, dim], seconds per epoch, the selected epoch)."""
    from common.evaluation.central import train_central

    def progress(epoch: int, value: float, seconds: float) -> None:
        if epoch == 1 or epoch % 5 == 0 or epoch == cfg.central_epochs:
            say(f"{name}: epoch {epoch:>3}/{cfg.central_epochs}  loss {value:.4f}  {seconds:.1f}s")

    def validate(params, theta) -> float:
        return float(evaluate_users(params, theta, store, item_h, cfg, "val")["hr"].mean())

    params, theta, epoch_s, selected = train_central(store, item_h, cfg, progress, validate)
    say(f"{name}: best validation HR@{cfg.top_k} at epoch {selected}")
    return params, theta, epoch_s, selected


def model_scorer(params: dict[str, np.ndarray], theta: np.ndarray, store: UserStore, item_h: np.ndarray):
    """score(users [n]) -> [n, n_items] of a trained model (shared params, theta [U, dim]) at each user's test
    context (store.test_ctx, cut to the model's context width: none for a context-free model)."""
    from common.evaluation.evaluate import catalogue_scorer
    from common.model.scoring import DENSE_NAMES

    dense = {name: np.asarray(params[name], np.float32) for name in DENSE_NAMES}
    ctx = np.asarray(store.test_ctx, np.float32)[:, : dense["context/shift"].shape[0]]
    return catalogue_scorer(dense, np.asarray(theta, np.float32), ctx, item_h, params.get("items/embedding"),
                            params.get("items/bias"))


def last_round_model(cfg: Config, run_dir: Path, store: UserStore) -> tuple[dict[str, np.ndarray], np.ndarray, int] | None:
    """(shared params, theta [U, dim], round) of a finished simulation's last round: checkpoint.npz's parameters and every
    simulated device's latest theta_u (devices/*/node-state.npz), in the order of store.user_keys (zeros for a
    user no device holds); None without a checkpoint (checkpoint-every=0)."""
    from client.state_files import DEVICES_DIR, NODE_STATE_FILE
    from server.checkpoint import CHECKPOINT_FILE, load_checkpoint

    if not (run_dir / CHECKPOINT_FILE).is_file():
        return None
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    params = checkpoint.params
    theta = np.zeros((store.n_users, cfg.dim), np.float32)
    index = {u: i for i, u in enumerate(store.user_keys)}
    for path in sorted((run_dir / DEVICES_DIR).glob(f"*/{NODE_STATE_FILE}")):
        with np.load(path) as f:
            for user, row in zip(f["user_keys"].astype(str), f["theta"]):
                if user in index:
                    theta[index[user]] = row
    return params, theta, int(checkpoint.round)


def expected_summary(hits: np.ndarray, k: int) -> dict[str, float]:
    """{"expected-hr@k": mean, "expected-hr@k-se": its standard error over users} of per-user expected hits
    (`common.evaluation.ceiling.expected_hits`)."""
    return {f"expected-hr@{k}": float(hits.mean()),
            f"expected-hr@{k}-se": float(hits.std(ddof=1) / np.sqrt(len(hits))) if len(hits) > 1 else float("nan")}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b over users (per-user HR of two systems on the same users) and its standard error."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")}


def planted_store_inputs(cfg: Config, ds, members: np.ndarray) -> tuple[UserStore, dict]:
    """(the members' UserStore with context, `common.evaluation.ceiling.planted_inputs` for it) of the embedded
    generator's data."""
    from common.evaluation.ceiling import planted_inputs
    from common.data.sources.synthetic import SyntheticConfig, generate

    synthetic = SyntheticConfig(users=cfg.synthetic_users, items=cfg.synthetic_items, seed=cfg.seed)
    store = UserStore.from_prepared(ds, members, use_context=True)
    return store, planted_inputs(ds, store, synthetic, generate(synthetic)[2])


def ceiling_rankings(cfg: Config, ds, members: np.ndarray) -> tuple[UserStore, dict]:
    """(the members' UserStore with context, {system: score(users) -> [n, n_items]}) of the ceiling rankings
    (`common.evaluation.ceiling`) of the embedded generator's data."""
    from common.evaluation.ceiling import ceiling_scorers

    store, inputs = planted_store_inputs(cfg, ds, members)
    return store, ceiling_scorers(**inputs)


def twin_hits(params: dict[str, np.ndarray], theta: np.ndarray, store: UserStore, item_h: np.ndarray, truth,
              k: int) -> dict[str, np.ndarray]:
    """{"logits", "probabilities": expected hits [U]} of a trained model's two context-free twins
    (`common.evaluation.evaluate.context_averaged_scorer`) against the planted truth(users) -> [n, n_items]."""
    from common.evaluation.ceiling import expected_hits
    from common.model.scoring import DENSE_NAMES

    dense = {name: np.asarray(params[name], np.float32) for name in DENSE_NAMES}
    return {average: expected_hits(context_averaged_scorer(dense, theta, store, item_h, params.get("items/embedding"),
                                                           params.get("items/bias"), average), truth, store, k)
            for average in ("logits", "probabilities")}


def ceiling_metrics(cfg: Config, ds, members: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Per-user test metrics of the ceiling rankings of the embedded generator's data."""
    store, scorers = ceiling_rankings(cfg, ds, members)
    return {name: evaluate_scores(score, store, ds.n_items, cfg, "test") for name, score in scorers.items()}


def simulate(cfg: Config, num_nodes: int = 2, verbose: bool = False, baselines: bool = True,
             say: Callable[[str], None] = print) -> Path:
    """The whole job: data, federated simulation, baselines, summary.json, rounds.csv, plots. Returns the run dir."""
    t_start = time.perf_counter()
    auto = cfg.loss == "auto"
    cfg, run_dir = _checked_run_dir(cfg)  # a resume under loss=auto goes on with the kept candidate
    if auto and cfg.loss != "auto":
        say(f"resume: loss=auto kept loss={cfg.loss} in {run_dir}; going on with it")
    t0 = time.perf_counter()
    data_path = resolve_dataset(cfg)
    ds = load_cached(str(data_path))
    data_s = time.perf_counter() - t0
    say(f"data: {data_path} ({ds.n_users} users, {ds.n_items} items, {len(ds.train)} training engagements, "
        f"context {list(ds.context_names)}) in {data_s:.1f}s")
    num_nodes = max(1, min(num_nodes, ds.n_users))
    from server.content import item_content

    t0 = time.perf_counter()  # h(c) before the federation: a bad vectors file or model fails here with its fix,
    content = item_content(cfg, ds.item_texts, ds.item_ids)  # and the server and baselines read it from the cache
    content_s = time.perf_counter() - t0
    say(f"content: {cfg.content_encoder} ({content.descriptor['model']}), h(c) width {content.width}, "
        f"{content_s:.1f}s")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        kept, fed, ray_placement = _federated_candidates(cfg, run_dir, num_nodes, verbose, say)
    except BaseException:
        if created and not cfg.resume and not (run_dir / "checkpoint.npz").is_file():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing half-written (a checkpoint is kept for resume)
        raise
    federated_s = time.perf_counter() - t0
    diag = diagnostics_dir(run_dir, cfg.private)
    systems = {"federated": fed["metrics"]}
    timings = {"data_s": data_s, "content_s": content_s, "federated_s": federated_s, **fed["timings"]}
    if baselines:
        base, base_t = run_baselines(kept, say, run_dir)  # the centralized models: the federation's kept loss
        systems["federated"].update(base.pop("federated", {}))
        systems.update(base)
        timings.update(base_t)
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "dataset": {"path": str(data_path), "name": ds.name, "users": ds.n_users, "items": ds.n_items,
                    "train_engagements": len(ds.train), "context": list(ds.context_names),
                    "cleaning": ds.cleaning},
        "systems": {s: systems[s] for s in SYSTEMS if s in systems},
        "content": {**content.descriptor, "width": content.width},
        **({"privacy": fed["privacy"]} if fed.get("privacy") else {}),
        "config": kept.to_flwr(),
        "nodes": num_nodes,
        "ray": ray_placement,
        "timings": timings,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    write_atomic(diag / "summary.json", json.dumps(summary, indent=2))
    plot_rounds(fed["rounds"], systems, cfg.top_k, diag / "rounds.png")
    _say_results(cfg, summary["systems"], run_dir, diag, say)
    return run_dir


#: where `fedctx simulate` under loss=auto trains each candidate before the kept one's files move up to the run dir
CANDIDATES_DIR = "candidates"


def _federated_candidates(cfg: Config, run_dir: Path, num_nodes: int, verbose: bool, say: Callable[[str], None]
                          ) -> tuple[Config, dict, dict]:
    """Run the federation of each of cfg.loss_candidates() and keep the one of the highest validation HR@k at its
    selected round; with two candidates each runs in run_dir/candidates/<loss>/ and the kept one's files then move
    up to run_dir (the other stays there, for comparison).

    Returns (the kept candidate's config, its federated.json (after a choice, with "loss" and "validation"
    {loss: HR@k} in "metrics"), where Ray ran)."""
    candidates = cfg.loss_candidates()
    if len(candidates) > 1:
        say(f"loss=auto: training {' and '.join(n for n, _ in candidates)}, keeping the better on validation "
            f"HR@{cfg.top_k} (set loss=softmax or loss=ials to train one)")
    runs = {}
    for loss, c in candidates:
        where = run_dir if len(candidates) == 1 else run_dir / CANDIDATES_DIR / loss
        if len(candidates) > 1:
            say(f"federated ({loss}): {c.num_rounds} rounds, server-lr {c.server_lr}")
        c = c.replace(run_dir=str(where))
        placement = run_flower_simulation(c, num_nodes, verbose)
        fed_file = diagnostics_dir(where, c.private) / "federated.json"
        if not fed_file.is_file():
            raise RuntimeError(f"the federated run wrote no results ({fed_file}); rerun with --verbose to see why")
        fed = json.loads(fed_file.read_text())
        runs[loss] = (c, fed, placement, _validation_at_selection(fed, c.top_k))
    validation = {loss: run[3] for loss, run in runs.items()}
    loss = max(validation, key=lambda n: -np.inf if validation[n] is None else validation[n])
    kept, fed, placement, _ = runs[loss]
    if len(candidates) > 1:
        say(f"federated: kept loss={loss} (validation HR@{cfg.top_k} "
            + ", ".join(f"{n} {v:.4f}" for n, v in validation.items() if v is not None) + ")")
        source = Path(kept.run_dir)
        for entry in sorted(source.iterdir()):
            entry.rename(run_dir / entry.name)
        source.rmdir()
        kept = kept.replace(run_dir=str(run_dir))
        fed["metrics"].update({"loss": loss, "validation": validation})
    return kept, fed, placement


def resumed_candidate(cfg: Config, loss: str | None) -> Config:
    """The config a resumed run goes on with: cfg, or under loss=auto the candidate of the loss its checkpoint was
    trained with (ConfigError when it is none of them)."""
    candidates = dict(cfg.loss_candidates())
    if len(candidates) == 1:
        return cfg
    if loss not in candidates:
        raise ConfigError(f"resume: loss=auto goes on with the kept candidate, and {cfg.run_dir}'s checkpoint was "
                          f"trained with loss={loss!r}, not one of {sorted(candidates)}. Fix: --set loss={loss}.")
    return candidates[loss]


def _validation_at_selection(fed: dict, k: int) -> float | None:
    """The validation HR@k of a federated run's selected round (None when it has none: under DP the last round is
    released whatever its validation)."""
    from common.federation.protocol import eval_metric

    row = next((r for r in fed["rounds"] if r.get("round") == fed["metrics"].get("selected_round")), {})
    return row.get(eval_metric("val", "hr", k))


def _checked_run_dir(cfg: Config) -> tuple[Config, Path]:
    """(cfg with its run-dir resolved (on a resume under loss=auto: the kept candidate), the run dir; a timestamped
    one under runs/ if not set). Fails before the
    simulation starts if the path is blocked by a file, is not empty (a new run), or holds no checkpoint of this
    run (resume)."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir.resolve()
    blocking = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"run directory {run_dir}: {blocking} is a file, not a directory. Fix: choose "
                                 f"another --out (or run-dir).")
    cfg = cfg.replace(run_dir=str(run_dir))
    if cfg.resume:  # fail before the simulation starts if the checkpoint is missing or from another run
        from server.checkpoint import CHECKPOINT_FILE, check_resumable, load_checkpoint

        state = load_checkpoint(run_dir / CHECKPOINT_FILE)
        cfg = resumed_candidate(cfg, state.config.get("loss"))  # under loss=auto: the kept candidate goes on
        check_resumable(state, simulation_inputs(cfg), run_dir / CHECKPOINT_FILE)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} exists and is not empty. Fix: choose another --out, "
                              f"or --set resume=true to go on from its checkpoint.")
    return cfg, run_dir


def _say_results(cfg: Config, systems: dict, run_dir: Path, diag: Path, say: Callable[[str], None]) -> None:
    """The results table, the federated system's intervals (eval-users) and, under DP, what is released."""
    say("")
    say(results_table(systems, cfg.top_k))
    say(f"(test split: each user's last engagement; full ranking over items not in the user's history; "
        f"sampled: 1 vs {cfg.eval_negatives} negatives)")
    if any(f"expected-hr@{cfg.top_k}" in m for m in systems.values()):
        say(f"(expected-hr@{cfg.top_k}: the planted probability of the test engagement in the top {cfg.top_k}, "
            f"from the generator's truth, standard error about 0.001; federated: its last round)")
    chosen = {name: m["loss"] for name, m in systems.items() if len(m.get("validation") or {}) > 1}
    if chosen:
        say("(loss=auto, chosen on validation HR@" + f"{cfg.top_k}: " + ", ".join(f"{n} {loss}" for n, loss in chosen.items())
            + "; summary.json has each candidate's validation HR)")
    fm = systems["federated"]
    if fm.get("evaluated_users") is not None:  # eval-users: a sub-sample, so each mean has a standard error
        k = cfg.top_k
        say(f"federated: evaluated on {int(fm['evaluated_users'])} sampled users; 95% intervals (mean +- 1.96 SE): "
            + ", ".join(f"{m} {fm[m]:.4f} +- {1.96 * fm[m + '-se']:.4f}" for m in (f"hr@{k}", f"ndcg@{k}")
                        if fm.get(m) is not None and fm.get(m + "-se") is not None))
    if cfg.private:
        say(f"released (covered by the guarantee in privacy.json): "
            f"{', '.join(p.name for p in sorted(run_dir.iterdir()) if p.name in RELEASED_FILES)}; "
            f"diagnostics (computed without noise, not covered): {diag}")
