"""One frozen, validated configuration for every job (simulation, client, server, benchmark).

Settings are named in kebab-case in `[tool.flwr.app.config]` and on the command line
(`--set local-steps=5`); the dataclass fields are the same names in snake_case.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping, get_args

from common.errors import FedctxError

__all__ = ["Config", "ConfigError", "config_from_mapping", "parse_overrides", "PrivacyMode", "Loss", "PRIVACY_MODES",
           "LOSSES", "MODEL_LOSSES", "IALS_RECIPE"]

#: The privacy modes (Config.privacy). Code outside Config asks cfg.central_dp, cfg.local_dp or cfg.private.
PrivacyMode = Literal["none", "central", "local", "local+central"]
PRIVACY_MODES: tuple[str, ...] = get_args(PrivacyMode)
#: The losses (Config.loss). Code outside Config asks cfg.ials (theta_u in closed form) or passes cfg.model_loss on
#: (never cfg.loss, which may be "auto").
Loss = Literal["auto", "softmax", "bce", "ials"]
LOSSES: tuple[str, ...] = get_args(Loss)
#: the losses of one trained model ("auto" is a choice between two of them, made by `fedctx simulate`)
MODEL_LOSSES: tuple[str, ...] = ("softmax", "bce", "ials")
#: loss=auto's second candidate, implicit ALS, takes these values of the settings left at their defaults: the
#: settings it was tuned with on ml-100k (docs/results.md, "The implicit-ALS objective")
IALS_RECIPE: dict[str, Any] = {"num_rounds": 100, "context_l2": 0.1, "server_lr": 0.01, "server_lr_final": 1.0,
                               "central_lr": 0.01, "central_epochs": 12}
SERVER_OPTIMIZERS = ("adam", "sgd")
TEXT_POOLING = ("mean", "tfidf")
CONTENT_ENCODERS = ("word2vec", "precomputed", "sentence-encoder")
#: server-item-lr under -1 (auto), for loss=softmax without DP: the item tables' plain step per unit of the
#: round's update sum (docs/results.md, "Third pass": better than 0 on seeds 0-2 in expected HR; on ml-100k the
#: difference is inside run-to-run noise)
AUTO_ITEM_LR = 50.0


#: upper bounds of the settings that size arrays (beyond them a run cannot allocate its tables)
_SIZE_LIMITS = {"dim": 4096, "text_dim": 4096, "negatives": 10_000, "eval_negatives": 100_000,
                "synthetic_users": 10_000_000, "synthetic_items": 10_000_000, "content_max_length": 8192,
                "content_dims": 4096, "content_neighbours": 10_000}


class ConfigError(FedctxError, ValueError):
    """A setting has a bad name or value; the message names the setting, the rule and the value."""


@dataclass(frozen=True)
class Config:
    """Every setting of a run, with its default.

    Units: learning rates are step sizes, `half-life-days` is in days, sizes are counts.
    """

    # data
    data: str = "synthetic"          # dataset directory, or "synthetic" for the embedded generator
    synthetic_users: int = 1000
    synthetic_items: int = 10000
    seed: int = 0
    run_dir: str = ""                # where a run writes its outputs ("" = runs/<date-time>)
    context_declaration: str = ""    # server: JSON context declaration (`fedctx data declare`); "" = dataset.toml's
    population: int = 0              # N, the users in the federation (DP's q N and delta); a deployment must set
                                     # it under central DP; a simulation counts its dataset's users (0 = that)

    # content encoder (server side, public catalogue): h(c) in R^width, width = the encoder's own
    content_encoder: str = "word2vec"  # "word2vec" (trained on the catalogue) | "precomputed" (content-path)
                                       # | "sentence-encoder" (pretrained Transformer, content-model)
    content_path: str = ""           # precomputed: .npz (item_ids, vectors) or .parquet (item_id + vector) file
    content_model: str = "sentence-transformers/all-MiniLM-L6-v2"  # sentence-encoder: local model directory,
                                     # or a name the library downloads (transformers, TensorFlow classes)
    content_max_length: int = 256    # sentence-encoder: tokens per item text (longer texts are cut)
    content_batch: int = 32          # sentence-encoder: texts per forward pass (speed only)
    content_standardize: bool = True  # standardise h(c) per dimension over the catalogue (mean 0, std 1)
    content_dims: int = 128          # an encoder wider than this is PCA-whitened over the catalogue to its top
                                     # content-dims axes (unit variance each); 0 = keep every dimension
    content_neighbours: int = 0      # h(c) := mean over c and its content-neighbours - 1 nearest catalogue items
                                     # (cosine), then standardised again; 1 = no smoothing; 0 = 1% of the
                                     # catalogue, at least 20 and at most 100 (server.content.neighbours_for;
                                     # docs/encoders.md)
    text_dim: int = 64               # word2vec only: vector size (the other encoders have their own width)
    text_epochs: int = 15            # word2vec only
    text_window: int = 5             # word2vec only
    text_pooling: str = "tfidf"      # word2vec only: "mean" | "tfidf" pooling of word vectors into h(c)

    # model
    dim: int = 32                    # theta_u, phi(c) in R^dim
    use_context: bool = True         # context shift theta_ctx . x and interaction x^T W phi(c)
    item_embedding: bool = True      # hybrid: add a shared item-id embedding and bias to phi(c)
    negatives: int = 16              # sampled negatives per engagement (32: docs/results.md, ninth pass)
    loss: Loss = "auto"              # "softmax" (sampled softmax) | "bce" (sigmoid BCE; calibrated P) | "ials"
    #                                  (implicit ALS: theta_u in closed form, the whole catalogue as negatives)
    #                                  | "auto": `fedctx simulate` without DP trains softmax and ials (IALS_RECIPE)
    #                                  and keeps the better on validation; a run of one model trains softmax
    unobserved_weight: float = 0.5   # ials: weight of the pull of every catalogue item's score toward 0
    l2: float = 1e-3                 # L2 penalty on theta_u and the item rows an example touches
    context_l2: float = 0.0          # L2 penalty pulling the context weights (theta_ctx, W_int) toward 0
    half_life_days: float = 30.0     # time decay of the history that warms up a new theta_u

    # federation
    num_rounds: int = 40
    min_nodes: int = 1               # a round goes on when at least this many nodes replied (failed ones dropped)
    min_connected: int = 0           # a round starts once this many nodes are connected (and min_nodes)
    round_timeout: float = 600.0     # seconds the server waits for a round's replies; late nodes are dropped
    sample_rate: float = 1.0         # q: each user takes part in a round independently with prob. q
    local_steps: int = 2             # full-batch local steps (SGD by default) per sampled user and round
    local_optimizer: str = "sgd"     # "sgd" | "adam" (Adam state restarts every round)
    local_lr: float = 0.01           # step size of the shared parameters' local copies
    theta_lr: float = 0.1            # step size of the private theta_u
    local_grad_clip: float = 1.0     # each local step clips a user's whole gradient to this L2 norm
    server_optimizer: str = "adam"   # "adam" (FedAdam, Reddi et al. 2021) | "sgd" (FedAvg)
    server_lr: float = 0.05
    server_lr_final: float = 0.1     # the server step size of the last round, as a fraction of server_lr (cosine decay)
    server_lr_warmup: int = 0        # the server step ramps up linearly over this many first rounds (0 = none)
    server_item_lr: float = -1.0     # > 0: the item-id table and biases take plain steps of this times the sum of
                                     # the round's user updates (a row moves with its users' count); 0 = they
                                     # follow server-optimizer; -1 = auto: AUTO_ITEM_LR for loss=softmax without
                                     # DP, else 0 (DP noise on the sum; ials touches every row)
    item_decay: float = 0.0          # decoupled weight decay of the item-id table per server step (AdamW)
    server_adam_eps: float = 1e-8    # Adam's eps at the server (the floor of its per-coordinate step denominator)
    secure_aggregation: bool = False  # SecAgg+ (Flower's): the server learns only the sum of each round's nodes
    secagg_max_users: int = 0        # U: the most users one node trains in a round (a public bound SecAgg+ scales
                                     # by); a device serves 1; 0 = the largest shard (simulation only)
    secagg_shares: int = 0           # SecAgg+ k: a node's secrets are shared with k - 1 neighbours (0 = all nodes
                                     # up to 2 ceil(log2 n) + 1)
    secagg_threshold: int = 0        # SecAgg+ t: shares that rebuild a secret (0 = a majority of k, at least 2)
    secagg_min_users: int = 2        # a secure round's update sum is unmasked only if it holds this many users
                                     # (their count is summed securely first; 1 = no floor)
    secagg_accept_two_nodes: bool = False  # run a secure round of 2 nodes although Flower's 32-bit mask seed
                                     # (flwrlabs/flower#7522) lets the server recover each node's vector in hours
    privacy: PrivacyMode = "none"    # "none" | "central" (user-level DP-FedAvg: clip per user, noise at the server)
                                     # | "local" (example-level DP-SGD on the device) | "local+central" (both)
    target_epsilon: float = 0.0      # > 0: calibrate noise-multiplier so all planned rounds stay within it
    delta: float = 0.0               # 0 = 0.1 / number of users (below 1/N)
    noise_multiplier: float = 1.0    # z: noise std = z * clip-norm on the sum of clipped updates
    clip_norm: float = 0.02          # C: L2 bound of each user's whole shared-parameter update
                                     # (the local update is at most local-lr * local-steps * local-grad-clip = 0.02)
    accountant: str = "rdp"          # "rdp" | "pld" (dp-accounting)
    adaptive_clip: bool = False      # quantile-based adaptive clipping (Andrew et al. 2021); clip-norm starts it
    clip_quantile: float = 0.5       # target share of users whose update is not clipped
    clip_lr: float = 0.2             # geometric step of the clip norm per round
    clip_count_stddev: float = 0.0   # noise std of the clipped-user count; 0 = expected users per round / 20
    local_clip_norm: float = 1.0     # local DP-SGD: L2 bound of each example's gradient
    local_noise_multiplier: float = 1.0  # local DP-SGD: noise std = local-noise-multiplier * local-clip-norm
    local_delta: float = 1e-5        # example-level delta of each client's local guarantee
    local_denominator: int = 16      # local DP-SGD divides each step's noisy gradient sum by this PUBLIC count
                                     # (never by the user's own number of examples, which the update would reveal)
    local_dp_theta: bool = True      # train the private theta_u with DP-SGD too, and warm it up by a DP release:
                                     # the example-level guarantee is exact; false = faster, NO formal guarantee
    audit_fraction: float = 0.0      # share of users held out of training: the membership audit's non-members

    # centralized baselines
    central_epochs: int = 20
    central_batch: int = 256
    central_lr: float = 0.005

    # evaluation
    top_k: int = 10
    eval_negatives: int = 99         # sampled protocol: 1 held-out item vs this many sampled negatives
    eval_every: int = 1              # evaluate every n rounds (the last round is always evaluated)
    eval_users: int = 0              # > 0: evaluate a random sub-sample of about this many users per evaluation
                                     # (each user with prob. eval-users / population), reported with standard
                                     # errors; 0 = every user

    # simulation engine
    ray_address: str = ""            # Ray cluster the simulation joins ("host:port" of its head, or "auto"); "" = a
                                     # local Ray on this machine. Every Ray node must see data and run-dir at the
                                     # same path (docs/deployment.md, "Simulation on a Ray cluster")

    # checkpoints
    checkpoint_every: int = 10       # write run-dir/checkpoint.npz every n rounds and after the last (0 = never)
    resume: bool = False             # go on from run-dir/checkpoint.npz (same settings; num-rounds may grow)

    def __post_init__(self) -> None:
        """Every rule, checked once here in groups (the first broken one raises ConfigError: setting, rule, value)."""
        self._check_inputs()
        self._check_model()
        self._check_federation()
        self._check_privacy()
        self._check_evaluation()

    def _need(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            value = getattr(self, name)
            raise ConfigError(f"{_kebab(name)}: {rule}. Found {value!r}.")

    def _check_inputs(self) -> None:
        """Types, the synthetic data and the content encoder; sizes before anything is allocated."""
        need = self._need
        for f in fields(self):
            if f.type in ("int", "float") and not isinstance(getattr(self, f.name), (int, float)):
                need(False, f.name, f"must be a number")
        need(self.synthetic_users >= 3, "synthetic_users", "must be >= 3")
        need(self.synthetic_items >= 20, "synthetic_items", "must be >= 20")
        need(self.content_encoder in CONTENT_ENCODERS, "content_encoder", f"must be one of {CONTENT_ENCODERS}")
        need(self.content_encoder != "precomputed" or self.content_path != "", "content_path",
             "must name the vectors file with content-encoder=precomputed (.npz with arrays item_ids and vectors, "
             "or .parquet with column item_id and a list column vector); e.g. --set content-path=vectors.npz")
        need(self.content_encoder != "sentence-encoder" or self.content_model != "", "content_model",
             "must name a local model directory or a model name with content-encoder=sentence-encoder")
        need(self.content_max_length >= 2, "content_max_length", "must be >= 2 (tokens, [CLS] and [SEP] included)")
        need(self.content_batch >= 1, "content_batch", "must be >= 1")
        need(self.content_dims >= 0, "content_dims", "must be >= 0 (0 = keep every dimension of the encoder)")
        need(self.content_neighbours >= 0, "content_neighbours",
             "must be >= 0 (0 = by the catalogue's size, 1 = each item's own vector only)")
        need(self.text_dim >= 2, "text_dim", "must be >= 2")
        need(self.text_epochs >= 1, "text_epochs", "must be >= 1")
        need(self.text_pooling in TEXT_POOLING, "text_pooling", f"must be one of {TEXT_POOLING}")
        for name, top in _SIZE_LIMITS.items():  # sizes checked before anything is allocated
            need(getattr(self, name) <= top, name, f"must be <= {top:,} (larger does not fit in memory)")

    def _check_model(self) -> None:
        """The model, its loss and the server's item step."""
        need = self._need
        need(self.dim >= 1, "dim", "must be >= 1")
        need(self.negatives >= 1, "negatives", "must be >= 1")
        need(self.loss in LOSSES, "loss", "must be 'auto', 'bce', 'softmax' or 'ials'")
        need(self.unobserved_weight > 0, "unobserved_weight", "must be > 0")
        need(0 <= self.item_decay, "item_decay", "must be >= 0")
        need(self.server_lr_warmup >= 0, "server_lr_warmup", "must be >= 0 rounds (0 = no ramp)")
        need(self.server_item_lr >= 0 or self.server_item_lr == -1, "server_item_lr",
             "must be >= 0 (0 = the item table follows server-optimizer), or -1 (auto)")
        need(not (self.ials and self.local_dp), "loss",
             "'ials' is not available with local DP (its closed-form theta_u has no per-example DP-SGD form); "
             "use 'softmax' or 'bce'")
        need(self.l2 >= 0, "l2", "must be >= 0")
        need(self.context_l2 >= 0, "context_l2", "must be >= 0")
        need(self.half_life_days > 0, "half_life_days", "must be > 0")

    def _check_federation(self) -> None:
        """Rounds, local training, the server optimiser, the privacy mode's name, SecAgg+."""
        need = self._need
        need(self.num_rounds >= 1, "num_rounds", "must be >= 1")
        need(self.population >= 0, "population", "must be >= 0 (0 = count the dataset's users, simulation only)")
        need(self.min_nodes >= 1, "min_nodes", "must be >= 1")
        need(self.min_connected >= 0, "min_connected", "must be >= 0")
        need(self.round_timeout > 0, "round_timeout", "must be > 0 seconds")
        need(0.0 < self.sample_rate <= 1.0, "sample_rate", "must be in (0, 1]")
        need(self.local_steps >= 1, "local_steps", "must be >= 1")
        need(self.local_optimizer in ("sgd", "adam"), "local_optimizer", "must be 'sgd' or 'adam'")
        need(self.local_lr > 0, "local_lr", "must be > 0")
        need(self.theta_lr > 0, "theta_lr", "must be > 0")
        need(self.local_grad_clip > 0, "local_grad_clip", "must be > 0")
        need(self.server_optimizer in SERVER_OPTIMIZERS, "server_optimizer",
             f"must be one of {SERVER_OPTIMIZERS}")
        need(self.server_lr > 0, "server_lr", "must be > 0")
        need(0.0 <= self.server_lr_final <= 1.0, "server_lr_final", "must be in [0, 1] (1 = a constant step size)")
        need(self.server_adam_eps > 0, "server_adam_eps", "must be > 0")
        need(self.privacy in PRIVACY_MODES, "privacy", f"must be one of {PRIVACY_MODES}")
        need(self.secagg_max_users >= 0, "secagg_max_users", "must be >= 0 (0 = the largest shard, simulation only)")
        need(self.secagg_shares >= 0, "secagg_shares", "must be >= 0 (0 = automatic)")
        need(self.secagg_min_users >= 1, "secagg_min_users", "must be >= 1 (1 = no floor; default 2: never one user's "
             "update alone)")
        need(self.secagg_threshold == 0 or self.secagg_threshold >= 2, "secagg_threshold",
             "must be 0 (automatic) or >= 2 (one share would let the server rebuild a node's secret alone)")
        need(self.secagg_threshold == 0 or self.secagg_shares == 0 or self.secagg_threshold <= self.secagg_shares,
             "secagg_threshold", "must be <= secagg-shares")

    def _check_privacy(self) -> None:
        """Central and local DP, and the modes' combinations with secure aggregation and the item table."""
        need = self._need
        if self.secure_aggregation and self.local_dp and not self.central_dp:  # privacy=local
            need(not self.item_embedding, "item_embedding",
                 "must be false with secure-aggregation and privacy=local (secure aggregation clips each user's "
                 "update to clip-norm, and a local-DP update of the item table is noised after its user's rows); "
                 "use privacy=central, or item-embedding=false")
        need(self.target_epsilon >= 0 and math.isfinite(self.target_epsilon), "target_epsilon",
             "must be finite and >= 0 (0 = use noise-multiplier as given; for no DP use privacy=none)")
        need(0 <= self.delta < 1, "delta", "must be in [0, 1) (0 = 0.1 / number of users)")
        need(self.noise_multiplier >= 0, "noise_multiplier", "must be >= 0")
        need(self.clip_norm > 0, "clip_norm", "must be > 0")
        need(self.accountant in ("rdp", "pld"), "accountant", "must be 'rdp' or 'pld'")
        need(0.0 < self.clip_quantile < 1.0, "clip_quantile", "must be in (0, 1)")
        need(self.clip_lr > 0, "clip_lr", "must be > 0")
        need(self.clip_count_stddev >= 0, "clip_count_stddev", "must be >= 0 (0 = expected users per round / 20)")
        need(self.local_clip_norm > 0, "local_clip_norm", "must be > 0")
        need(self.local_noise_multiplier >= 0, "local_noise_multiplier", "must be >= 0")
        need(0 < self.local_delta < 1, "local_delta", "must be in (0, 1)")
        need(self.local_denominator >= 1, "local_denominator", "must be >= 1 (a public count of examples)")
        if self.local_dp:
            need(self.local_optimizer == "sgd", "local_optimizer", "must be 'sgd' with local DP (DP-SGD)")
        if self.local_dp and self.central_dp:  # privacy=local+central
            need(not self.item_embedding, "item_embedding",
                 "must be false with privacy=local+central (local noise on the untouched item rows is added "
                 "after the per-user clip, which only the content-only model avoids); use privacy=local or central")

    def _check_evaluation(self) -> None:
        """The audit, the centralized baselines, evaluation, checkpoints."""
        need = self._need
        need(0.0 <= self.audit_fraction < 1.0, "audit_fraction", "must be in [0, 1)")
        need(self.central_epochs >= 1, "central_epochs", "must be >= 1")
        need(self.central_batch >= 1, "central_batch", "must be >= 1")
        need(self.central_lr > 0, "central_lr", "must be > 0")
        need(self.top_k >= 1, "top_k", "must be >= 1")
        need(self.eval_negatives >= 1, "eval_negatives", "must be >= 1")
        need(self.eval_every >= 1, "eval_every", "must be >= 1")
        need(self.eval_users >= 0, "eval_users", "must be >= 0 (0 = evaluate every user)")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = no checkpoints)")
        need(not (self.resume and not self.run_dir), "resume",
             "needs run-dir: the directory of the run to go on with (its checkpoint.npz)")

    # -- the privacy mode and the loss, asked as questions ------------------------------------------
    @property
    def central_dp(self) -> bool:
        """User-level DP-FedAvg: per-user clipping on the node, noise and accounting on the server."""
        return self.privacy in ("central", "local+central")

    @property
    def local_dp(self) -> bool:
        """Example-level DP-SGD on every device."""
        return self.privacy in ("local", "local+central")

    @property
    def ials(self) -> bool:
        """loss=ials: theta_u solved in closed form over the whole catalogue (not trained by local steps)."""
        return self.loss == "ials"

    @property
    def item_lr(self) -> float:
        """The server-item-lr in force: as set, or under -1 (auto) AUTO_ITEM_LR for loss=softmax without DP and 0
        otherwise: central DP's noise on the sum and local DP's noise on every row would be multiplied by it, and
        under loss=ials every user's update reaches every item row, so the sum's step diverges (docs/results.md)."""
        if self.server_item_lr != -1:
            return self.server_item_lr
        return AUTO_ITEM_LR if self.model_loss == "softmax" and not self.private else 0.0

    @property
    def model_loss(self) -> str:
        """The loss of one trained model (one of MODEL_LOSSES): as set, and softmax under loss=auto (a deployment's
        ServerApp and ClientApp, a benchmark, the sweep and a device train one model; `fedctx simulate` chooses
        between `loss_candidates` instead)."""
        return "softmax" if self.loss == "auto" else self.loss

    def loss_candidates(self) -> list[tuple[str, "Config"]]:
        """[(name, config)] of the models `fedctx simulate` trains and chooses between on validation HR@k: under
        loss=auto without DP softmax and ials (ials with IALS_RECIPE's value of each setting left at its
        default); otherwise one, the model_loss (under DP no selection is made, so none has to be accounted)."""
        if self.loss != "auto" or self.private:
            return [(self.model_loss, self.replace(loss=self.model_loss))]
        defaults = Config()
        recipe = {k: v for k, v in IALS_RECIPE.items() if getattr(self, k) == getattr(defaults, k)}
        return [("softmax", self.replace(loss="softmax")), ("ials", self.replace(loss="ials", **recipe))]

    @property
    def private(self) -> bool:
        """Any DP mode: the run releases only the last round's model and keeps data-dependent values apart."""
        return self.privacy != "none"

    def to_flwr(self) -> dict[str, Any]:
        """Flat kebab-case mapping, as in `[tool.flwr.app.config]`."""
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _coerce(name: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{_kebab(name)}: must be true or false. Found {value!r}.")
    if kind == "int":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{_kebab(name)}: must be an integer. Found {value!r}.") from None
        if number != int(number):
            raise ConfigError(f"{_kebab(name)}: must be an integer. Found {value!r}.")
        return int(number)
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{_kebab(name)}: must be a number. Found {value!r}.") from None
    return str(value)


def config_from_mapping(values: Mapping[str, Any], base: Config | None = None) -> Config:
    """Build a Config from kebab- or snake-case keys (e.g. Flower's `context.run_config`).

    Unknown keys are an error that lists the known ones.
    """
    known = {f.name: f.type for f in fields(Config)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            names = ", ".join(sorted(_kebab(n) for n in known))
            raise ConfigError(f"unknown setting {key!r}. Known settings: {names}.")
        changes[name] = _coerce(name, str(known[name]), value)
    return dataclasses.replace(base or Config(), **changes)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse `key=value` strings from `--set`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value. Found {item!r}. Example: --set num-rounds=10.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
