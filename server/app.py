"""The Flower ServerApp: content encoder, initial model, user-level FedAvg, outputs of the run."""

from __future__ import annotations

import json
import os
import secrets
import time
from logging import ERROR
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.federation.aggregation import ServerOptimizer, item_decay, item_sgd_lr
from common.errors import SERVER_ERROR_ENV, message as error_message, record_server_error
from common.io import save_npy_atomic, savez_atomic, write_atomic
from common.config import Config, ConfigError, config_from_mapping
from common.data.loader import load_catalogue
from common.data.datasets import resolve_dataset
from common.evaluation.metrics import evaluation_keys
from common.model.formula import ModelShape, init_shared
from common.federation.params import from_record, to_record
from common.federation.protocol import (EVALUATED_USERS, ITEM_VECTORS, RANKING, ROUND, SECAGG_DROPPED, SKIPPED, STANDARD_ERROR,
                             eval_metric, ranking_metric)
from common.privacy.release import RELEASED_FILES, diagnostics_dir
from common.evaluation.report import format_round, write_rounds_csv
from common.privacy.ledger import PrivacyLedger, RoundRecord
from common.privacy.sampling import SamplingKey
from common.privacy.noise import SecureGaussian
from common.privacy.accounting import calibrate_noise
from common.privacy.statements import central_statement, local_guarantee
from server.checkpoint import (CHECKPOINT_FILE, ServerState, check_resumable, load_checkpoint, read_journal,
                               save_checkpoint, write_journal, JOURNAL_FILE)
from common.privacy.statements import MASK_SEED_WEAKNESS
from common.data.schema import SCHEMA_FILE, PublicSchema, build_schema, declared_context
from server.content import item_content
from server.central_dp import AdaptiveClip, CentralDP
from server.secagg_driver import SecureAggregation
from server.strategy import UserFedAvg

__all__ = ["app", "run_federated", "public_inputs"]

app = ServerApp()


def public_inputs(cfg: Config) -> tuple[PublicSchema, np.ndarray]:
    """The public schema and h(c) [n_items, text_dim], from the catalogue (dataset.toml and the items file) and
    the context declaration only: the server never opens an interactions file."""
    spec, item_ids, item_texts = load_catalogue(resolve_dataset(cfg))
    context = declared_context(spec, cfg.context_declaration, cfg.privacy)
    content = item_content(cfg, item_texts, item_ids)
    return build_schema(item_ids, context, content.descriptor, content.h), content.h


def _check_memory(shape: ModelShape) -> None:
    """Refuse, before allocating, a model whose tables (parameters, Adam's two moments, h(c)) exceed the memory."""
    per_item = (shape.dim + 1) * 3 + shape.text_dim if shape.item_embedding else shape.text_dim
    need = 4 * shape.n_items * per_item
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return
    if need > have:
        raise ConfigError(f"dim: the item tables need about {need / 2**30:.1f} GiB ({shape.n_items:,} items x dim "
                          f"{shape.dim}, text width {shape.text_dim}), more than this machine's "
                          f"{have / 2**30:.1f} GiB. Fix: a smaller dim, or item-embedding=false.")


def run_federated(grid: Grid, cfg: Config, run_dir: Path | None) -> dict:
    """Run cfg.num_rounds rounds (with cfg.resume: the rounds after run_dir's checkpoint); write rounds.csv,
    federated.json and the checkpoint into run_dir; return the result."""
    t_start = time.perf_counter()
    checkpoint, state = _resumed_state(cfg, run_dir)
    t0 = time.perf_counter()
    schema, item_h = public_inputs(cfg)
    content_seconds = time.perf_counter() - t0
    if state is not None and state.schema_hash not in (None, schema.hash):
        raise ConfigError(f"resume: {checkpoint} was trained under public schema {state.schema_hash[:12]}, this run's "
                          f"is {schema.hash[:12]} (another catalogue, context declaration or content encoder). "
                          f"Resume with the same inputs, or start a new run-dir.")
    shape = ModelShape(n_items=schema.n_items, text_dim=item_h.shape[1], dim=cfg.dim,
                       context_dim=schema.context_dim if cfg.use_context else 0, item_embedding=cfg.item_embedding)
    _check_memory(shape)
    params = state.params if state else init_shared(shape, cfg.seed)
    n_members = cfg.population
    if cfg.central_dp and n_members < 1:
        raise ConfigError("population: central DP needs N, the number of users in the federation (its q N "
                          "denominator and delta). Set --run-config population=<N> (a simulation sets it itself).")
    print(f"federated: {len(list(grid.get_node_ids()))} nodes, "
          + (f"{n_members} training users, " if n_members else "")
          + f"{schema.n_items} items, {cfg.num_rounds} rounds, sample rate {cfg.sample_rate}, "
            f"schema {schema.hash[:12]}", flush=True)
    sampling_key, run_token, starts, journal, begun = _run_identity(state, run_dir)
    dp, delta_warning = _central_dp(cfg, state, journal) if cfg.central_dp else (None, None)
    secure = _secure_aggregation(cfg) if cfg.secure_aggregation else None

    def write_checkpoint(round_: int) -> None:
        save_checkpoint(checkpoint, ServerState(
            round=round_, params=strategy.latest, optimizer=strategy.optimizer, config=cfg.to_flwr(),
            rows=strategy.log.rows, ledger=dp.ledger.to_rows() if dp else [], clip_norm=dp.clip_norm if dp else None,
            noise_multiplier=dp.noise_multiplier if dp else None, best=strategy.best, sampling_key=sampling_key,
            starts=starts, schema_hash=schema.hash, run_token=run_token, content=schema.content))
        if dp is not None:
            dp.ledger.write_csv(run_dir / "privacy_ledger.csv")

    def begin_round(round_: int, train: bool) -> None:
        if train:
            begun["rounds"] += 1
            begun["last"] = max(begun["last"], round_)
        write_journal(run_dir, run_token, begun["rounds"], begun["last"], dp.ledger.to_rows() if dp else [])

    if state is not None:  # a resumed run may have raised num-rounds: the step size decays over the new length
        state.optimizer.total_steps = cfg.num_rounds
    strategy = UserFedAvg(
        content=to_record({ITEM_VECTORS: item_h}), schema=schema, min_nodes=cfg.min_nodes, min_connected=cfg.min_connected,
        run_token=run_token,
        optimizer=state.optimizer if state else ServerOptimizer(cfg.server_optimizer, cfg.server_lr,
                                                                eps=cfg.server_adam_eps, total_steps=cfg.num_rounds,
                                                                final_fraction=cfg.server_lr_final,
                                                                warmup_steps=cfg.server_lr_warmup,
                                                                decay=item_decay(cfg),
                                                                sgd_lr=item_sgd_lr(cfg)),
        sample_rate=cfg.sample_rate, sampling_key=sampling_key, eval_every=cfg.eval_every, num_rounds=cfg.num_rounds,
        on_round=lambda row: print(format_round(row, cfg.num_rounds, cfg.top_k, private=cfg.private), flush=True),
        dp=dp, select_key=None if cfg.private else eval_metric("val", "hr", cfg.top_k),
        round_offset=state.round if state else 0,
        checkpoint_every=cfg.checkpoint_every if checkpoint is not None else 0, on_checkpoint=write_checkpoint,
        secure=secure, fail_fast=bool(os.environ.get(SERVER_ERROR_ENV)),  # a simulation's nodes share one dataset
        on_begin=begin_round if run_dir is not None else None, replayed_until=begun["last"], attempt=starts,
    )
    if state is not None:
        strategy.log.rows = list(state.rows)
        strategy.best = state.best
    result = strategy.start(grid=grid, initial_arrays=to_record(params), timeout=cfg.round_timeout,
                            num_rounds=cfg.num_rounds - (state.round if state else 0),
                            train_config=ConfigRecord({}), evaluate_config=ConfigRecord({}))
    out = _result(cfg, strategy, result, schema, content_seconds, t_start)
    privacy = _central_privacy(cfg, dp, sampling_key, secure is not None, delta_warning) if dp is not None else None
    out["privacy"] = _other_privacy(cfg, privacy, out, secure, max(begun["rounds"], cfg.num_rounds), starts)
    if run_dir is not None:
        write_outputs(run_dir, cfg, out, item_h, schema, dp.ledger if dp is not None else None,
                      checkpoint if checkpoint is not None and checkpoint.is_file() else None)
    return out


def _resumed_state(cfg: Config, run_dir: Path | None) -> tuple[Path | None, ServerState | None]:
    """(the checkpoint's path, None without run_dir; its state with cfg.resume, else None)."""
    checkpoint = run_dir / CHECKPOINT_FILE if run_dir is not None else None
    state = None
    if cfg.resume:
        if checkpoint is None:
            raise ConfigError("resume: needs run-dir, the directory of the run to go on with.")
        state = load_checkpoint(checkpoint)
        check_resumable(state, cfg, checkpoint)
        print(f"resume: {checkpoint} at round {state.round}; rounds {state.round + 1}-{cfg.num_rounds} to go",
              flush=True)
    return checkpoint, state


def _run_identity(state: ServerState | None, run_dir: Path | None
                  ) -> tuple[SamplingKey, str, int, dict | None, dict[str, int]]:
    """(sampling key, run token, starts: the run's attempt, the journal of a resumed run, the rounds begun so far
    {"rounds", "last"}): new for a new run, the checkpoint's (and the journal's) for a resumed one."""
    sampling_key = (state.sampling_key if state is not None and state.sampling_key is not None
                    else SamplingKey.fresh())
    run_token = state.run_token if state is not None and state.run_token else secrets.token_hex(8)
    starts = state.starts + 1 if state is not None else 1  # a resumed simulation's nodes warm theta_u up again
    journal = read_journal(run_dir, run_token) if state is not None else None
    begun = {"rounds": journal["rounds_begun"] if journal else (state.round if state else 0),
             "last": journal["last_round_begun"] if journal else 0}
    if not sampling_key.secret:
        print("WARNING: the sampling key comes from FEDCTX_TEST_ONLY_SAMPLING_KEY: the sampling is NOT secret and "
              "no privacy guarantee of this run holds (tests only).", flush=True)
    return sampling_key, run_token, starts, journal, begun


def _other_privacy(cfg: Config, privacy: dict | None, out: dict, secure: SecureAggregation | None, rounds: int,
                   starts: int) -> dict | None:
    """privacy.json: the central part (privacy) with the local-DP guarantee over `rounds` rounds (the rounds
    actually run, a resumed run's replays included: each one may be a release of every client) and the secure
    aggregation's settings (out["secure_aggregation"] added)."""
    if cfg.local_dp:  # a bound that needs nobody's sampling: each device reports its own users' epsilon
        local = local_guarantee(cfg.local_noise_multiplier, cfg.local_steps, rounds, cfg.local_delta,
                                cfg.local_clip_norm, cfg.accountant, cfg.local_dp_theta, cfg.local_denominator,
                                warm_starts=starts)
        local["noise_source"] = repr(SecureGaussian())
        print(f"privacy: {local['statement']}", flush=True)
        privacy = {**privacy, "local": local} if privacy else local
    if secure is not None:
        privacy = _secure_aggregation_report(cfg, secure, out, privacy)
    if privacy is not None and cfg.private:
        privacy["released"] = "the last round's global model; nothing chosen by unnoised metrics"
    return privacy


def _central_dp(cfg: Config, state: ServerState | None, journal: dict | None) -> tuple[CentralDP, str | None]:
    """The central-DP state of a new or resumed run (noise multiplier, ledger, adaptive clipping) and the warning
    about a large delta (None if delta is small)."""
    n_members = cfg.population
    delta = cfg.delta or 0.1 / n_members
    z = (calibrate_noise(cfg.target_epsilon, cfg.sample_rate, cfg.num_rounds, delta, cfg.accountant)
         if cfg.target_epsilon > 0 else cfg.noise_multiplier)
    if state is not None:  # the rounds so far stay in the ledger; z was fixed when the run began
        z = state.noise_multiplier
    expected = cfg.sample_rate * n_members
    adaptive = AdaptiveClip(cfg.clip_quantile, cfg.clip_lr, cfg.clip_count_stddev or expected / 20.0
                            ) if cfg.adaptive_clip else None
    # releases made after the checkpoint and before the interruption (the journal's) stay accounted
    rows = (state.ledger + (journal["ledger"][len(state.ledger):] if journal else [])) if state else []
    ledger = PrivacyLedger(delta=delta, accountant=cfg.accountant, records=[RoundRecord(**r) for r in rows])
    dp = CentralDP(clip_norm=state.clip_norm if state else cfg.clip_norm, noise_multiplier=z,
                   denominator=expected, ledger=ledger, adaptive=adaptive)
    _ = dp.sum_noise_multiplier  # fails early, with the fix, if the count noise is too small
    delta_warning = (f"delta = {delta:.3g} is large (the default 0.1/N, a small federation): a mechanism that publishes one user's data "
                     f"outright with probability delta meets (0, delta)-DP, so delta should be well below 1/N and "
                     f"small in absolute terms. Set delta=<e.g. 1e-6>, or federate more users."
                     if delta > 1e-3 or delta * n_members > 0.1 + 1e-12 else None)
    if delta_warning:
        print(f"WARNING: {delta_warning}", flush=True)
    print(f"privacy: user-level DP-FedAvg, clip norm {cfg.clip_norm}"
          + (f" (adaptive, target quantile {cfg.clip_quantile})" if adaptive else "")
          + f", noise multiplier {z:.4f}, Poisson sampling q = {cfg.sample_rate}, delta = {delta:.3g}", flush=True)
    return dp, delta_warning


def _secure_aggregation(cfg: Config) -> SecureAggregation:
    """The server's SecAgg+ settings (cfg.secure_aggregation), announced with the mask seed's weakness."""
    if cfg.secagg_max_users < 1:
        raise ConfigError("secagg-max-users: secure aggregation scales every node's sum by U, the most users one "
                          "node trains in a round (a public bound). Set --run-config secagg-max-users=1 for "
                          "devices that serve one user (a simulation sets it itself).")
    secure = SecureAggregation(max_users=cfg.secagg_max_users, clip_norm=cfg.clip_norm,
                               metric_keys=tuple(evaluation_keys(cfg.top_k, cfg.eval_users > 0)), shares=cfg.secagg_shares,
                               threshold=cfg.secagg_threshold, timeout=cfg.round_timeout,
                               accept_two_nodes=cfg.secagg_accept_two_nodes, min_users=cfg.secagg_min_users)
    print(f"secure aggregation: SecAgg+ (Flower's secaggplus_mod on the nodes); the server learns each "
          f"round's sum over nodes, not one node's, within the limit below; each user's update is clipped to "
          f"{cfg.clip_norm}" + (" (the first round's; it adapts)" if cfg.adaptive_clip and cfg.central_dp else "")
          + f" and a node trains at most secagg-max-users = {cfg.secagg_max_users} users a round", flush=True)
    print(f"WARNING: {MASK_SEED_WEAKNESS}", flush=True)
    return secure


def _result(cfg: Config, strategy: UserFedAvg, result, schema: PublicSchema, content_seconds: float,
            t_start: float) -> dict:
    """federated.json's content without "privacy": the selected and the last round's test metrics, the rounds,
    the content encoder, timings and the released arrays."""
    rows = strategy.log.rows
    k = cfg.top_k
    last = next((r for r in reversed(rows) if eval_metric("test", "hr", k) in r), {})
    # early stopping on validation only without DP: under DP the released model is the last round's
    selected = next((r for r in rows if r[ROUND] == strategy.best[1]), last)

    def test_metrics(row: dict) -> dict:
        out = {ranking_metric(name, k): row.get(eval_metric("test", name, k)) for name in RANKING}
        if cfg.eval_users > 0:  # sub-sampled evaluation: each mean's standard error and the users it is over
            out.update({ranking_metric(name, k) + STANDARD_ERROR:
                        row.get(eval_metric("test", name, k) + STANDARD_ERROR) for name in RANKING})
            out["evaluated_users"] = row.get(EVALUATED_USERS)
        return out

    released = strategy.latest if cfg.private else (strategy.best[2] if strategy.best[2] is not None else (
        from_record(result.arrays) if result.arrays is not None else None))
    return {
        "metrics": {**test_metrics(selected), "selected_round": selected.get("round")},
        "last_round_metrics": {**test_metrics(last), "round": last.get("round")},
        "rounds": rows,
        "content": dict(schema.content),
        "timings": {"content_encoder_s": content_seconds, "federated_total_s": time.perf_counter() - t_start,
                    "mean_round_s": sum(r["seconds"] for r in rows) / max(len(rows), 1)},
        "final_arrays": released,
    }


def _central_privacy(cfg: Config, dp: CentralDP, sampling_key: SamplingKey, secure: bool,
                     delta_warning: str | None) -> dict:
    """privacy.json's user-level (central DP) part, printed in one line."""
    privacy = {
        "unit": "user", "epsilon": dp.ledger.epsilon(), "delta": dp.ledger.delta,
        "accountant": f"{dp.ledger.accountant} (dp-accounting)", "noise_multiplier": dp.noise_multiplier,
        "clip_norm": dp.clip_norm, "neighbouring": "add or remove one user (all of the user's engagements)",
        "sampling": {"scheme": "poisson", "q": cfg.sample_rate, "secret": sampling_key.secret},
        "rounds": len(dp.ledger.records),
        "statement": central_statement(dp.ledger, sampling_key.secret, cfg.item_embedding, secure),
        "noise_source": repr(dp.noise),
        **({"warnings": [delta_warning]} if delta_warning else {}),
    }
    if dp.adaptive is not None:
        privacy["clip_norm"] = cfg.clip_norm
        privacy["adaptive_clipping"] = {
            "initial_clip_norm": cfg.clip_norm, "final_clip_norm": dp.clip_norm,
            "quantile": dp.adaptive.quantile, "lr": dp.adaptive.lr, "count_stddev": dp.adaptive.count_stddev,
            "sum_noise_multiplier": dp.sum_noise_multiplier,
            "note": "the ledger's noise multiplier z covers the noised sum and the noised clipped count together"}
    print(f"privacy: {privacy['statement']}", flush=True)
    return privacy


def _secure_aggregation_report(cfg: Config, secure: SecureAggregation, out: dict, privacy: dict | None) -> dict:
    """Adds out["secure_aggregation"] (settings and the run's counts); returns privacy with the settings (a
    statement of none when privacy=none)."""
    rows = out["rounds"]
    out["secure_aggregation"] = {
        "protocol": "SecAgg+ (Bell et al. 2020): Flower's secaggplus_mod on the nodes, server.secagg on the server",
        "what_the_server_receives": "per round, the sum over the nodes that sent a masked vector: the clipped "
                                    "updates, the user count (and the clipped-user count), the evaluation metrics",
        "max_users": secure.max_users, "clip_norm": cfg.clip_norm, "shares": secure.shares or "auto",
        "threshold": secure.threshold or "auto", "accept_two_nodes": secure.accept_two_nodes,
        "mask_strength": MASK_SEED_WEAKNESS}
    if privacy is None:  # privacy=none: no guarantee, but the secure aggregation's limit is still stated
        privacy = {"guarantee": "none (privacy=none): everything is released"}
    privacy["secure_aggregation"] = dict(out["secure_aggregation"])  # the settings only: the counts below
    # depend on the nodes (diagnostics)
    out["secure_aggregation"].update({
        "rounds_skipped": sum(1 for r in rows if r.get(SKIPPED)),
        "nodes_dropped_after_sharing_keys": sum(int(r.get(SECAGG_DROPPED, 0)) for r in rows)})
    return privacy


def write_outputs(run_dir: Path, cfg: Config, out: dict, item_h: np.ndarray, schema: PublicSchema,
                  ledger: PrivacyLedger | None, checkpoint: Path | None) -> None:
    """The run's files. Without DP everything sits in run_dir. Under DP run_dir holds only what is released
    (RELEASED_FILES: the last round's model, the public content vectors, privacy.json and the ledger) and the
    server-secret checkpoint; the per-round counts, losses and metrics go to run_dir/diagnostics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    diag = diagnostics_dir(run_dir, cfg.private)
    diag.mkdir(parents=True, exist_ok=True)
    privacy = out["privacy"]
    if ledger is not None:
        ledger.write_csv(run_dir / "privacy_ledger.csv")
        privacy["ledger"] = "privacy_ledger.csv"  # beside privacy.json (no path of the server's machine)
    if checkpoint is not None:
        out["checkpoint"] = str(checkpoint)
    write_rounds_csv(out["rounds"], diag / "rounds.csv")
    save_npy_atomic(run_dir / "item_vectors.npy", item_h)  # h(c) of the public catalogue, for scoring and the audit
    schema.write(run_dir / SCHEMA_FILE)  # public: catalogue ids, context declaration, content encoder
    if out["final_arrays"] is not None:  # the released global model (shared parameters only)
        savez_atomic(run_dir / "global_model.npz", {k.replace("/", "."): v for k, v in out["final_arrays"].items()})
    if privacy is not None and not cfg.private:
        write_atomic(run_dir / "privacy.json", json.dumps(privacy, indent=2))
    elif privacy is not None:
        released = [f for f in RELEASED_FILES if (run_dir / f).is_file() or f == "privacy.json"]
        doc = {**privacy, "files": {
            "released": released,
            "server_secret": [f for f in (CHECKPOINT_FILE, JOURNAL_FILE) if (run_dir / f).is_file()],
            "diagnostics": f"{diag.name}/ (computed from the users' data without noise; written by the server in "
                           f"every run, simulation or deployment; not covered by the guarantee: keep it with the "
                           f"server, never publish it)",
            **({"device_state": "devices/ (each simulated device's private state: theta_u, round counts, its "
                                "encoded data; a device keeps it and never sends it; not released)"}
               if (run_dir / "devices").is_dir() else {})}}
        write_atomic(run_dir / "privacy.json", json.dumps(doc, indent=2))
    write_atomic(diag / "federated.json", json.dumps({k: v for k, v in out.items() if k != "final_arrays"}, indent=2))


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        cfg = config_from_mapping(context.run_config)
        if cfg.loss == "auto":  # `fedctx simulate` passes the candidate it trains; a deployment trains one model
            print("loss=auto: this federation trains one model, with loss=softmax (`fedctx simulate` trains softmax "
                  "and ials and keeps the better on validation; set loss=ials for dense data such as MovieLens)",
                  flush=True)
        run_federated(grid, cfg, Path(cfg.run_dir) if cfg.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    except Exception as exc:  # one message (common.errors): in a simulation the harness raises it, here we log it
        if record_server_error(exc):
            return
        log(ERROR, "fedctx server: %s", error_message(exc))
        raise
