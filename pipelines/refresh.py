"""``recsys refresh``: keep a deployed model fresh, a champion/challenger loop over a new version of the log.

new log -> dataset (ingested with the champion's options) -> challenger (warm-started from the champion)
-> both scored on the same held-out split of the new dataset -> promoted only if not worse than the champion
by more than a margin -> ``POST /admin/reload`` to the running service (or only the artifact, written).

**The champion on the new data** is scored as it would serve it, by raw id: users and items it knows keep
their final embeddings; a new user is folded in from their training items that it knows
(:meth:`recsys.inference.recommend.Recommender.fold_in`, what ``POST /recommend/new-user`` does), or gets its
popular items when it knows none of them (serving's ``fallback=popular``); items it does not know can never be
recommended by it. The challenger is trained under the honest protocol (selected on valid), so the test
split is new to both.

**The gate**: promote when ``challenger >= champion - margin`` on the selection metric (``recall@20``
unless the champion's config or ``--metric`` says otherwise). The margin is relative by default
(``margin * champion``: the same tolerance on graphs whose recall differs tenfold), 1 %; ``absolute`` makes
it a difference in metric units.

**Re-run safety**: the work directory holds ``dataset/`` and ``challenger/`` (each written atomically:
whole or absent), ``challenger.ckpt/`` while it trains (a re-run resumes it), ``decision.json`` and
``state.json`` (both written atomically). The state is keyed by the champion's artifact id; once it records
a promotion, a re-run does nothing more. Before reloading, ``GET /model`` is read: a service that already
serves the challenger (a crash between the reload and the state write) is not reloaded again, and one that
serves neither artifact is left alone.

**Exit codes**: 0 promoted (or promoted by an earlier run), 1 bad input (the usual ``recsys`` error),
3 not promoted (the challenger is worse than the gate allows), 4 the service could not be checked or
reloaded (the decision was made and recorded; re-run to retry).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipelines.ingest import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.artifact import (
    Artifact,
    check_dataset,
    dataset_digest,
    load_artifact,
    read_history,
    read_json_object,
)
from recsys.atomic import atomic_write_text
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.protocol import Refit, excluded_splits, selection_split, training_splits
from recsys.errors import InputError, first_line
from recsys.evaluation.metrics import METRIC_NAMES
from recsys.evaluation.ranking import GroundTruth, full_ranking
from recsys.inference.recommend import Recommender
from recsys.inference.scoring import EmbeddingScorer
from recsys.training.jobs import train_artifact
from recsys.training.run import CHECKPOINT_FILE
from recsys.training.warmstart import Parent, load_parent, match_ids, raw_ids

logger = logging.getLogger(__name__)

EXIT_PROMOTED = 0
EXIT_NOT_PROMOTED = 3
EXIT_SERVICE_FAILED = 4
MARGIN_TYPES = ("relative", "absolute")
STATE_FILE = "state.json"
DECISION_FILE = "decision.json"
SPLIT = "test"


class ServiceError(Exception):
    """The running service could not be checked or reloaded (exit code 4); the message says why."""


@dataclass(frozen=True)
class RefreshConfig:
    """One refresh: which champion, which new data, the gate, and where to promote.

    Args:
        champion: The artifact being served now.
        workdir: Where the new dataset, the challenger and the state go (one per refresh).
        log: The new version of the log (all of it, old events and new): ingested like the champion's.
        dataset: A dataset directory of the new version instead of ``log``.
        train: Training values over the champion's config (a config file's, then flags).
        train_source: Where ``train`` came from, for error messages.
        margin: How much worse than the champion the challenger may be (see ``margin_type``).
        margin_type: ``relative`` (a share of the champion's value) or ``absolute`` (metric units).
        init_shrink: Multiply the champion's layer-0 rows by this before the warm start (``--init-shrink``).
        serve_url: The running service to reload (``None``: only write the artifact).
        token: Its admin bearer token.
        http_timeout_s: Seconds to wait for one HTTP call (a reload answers once every replica serves it).
        progress: Show the stage lines and the training progress bar.
    """

    champion: Path
    workdir: Path
    log: Path | None = None
    dataset: Path | None = None
    train: dict[str, Any] = field(default_factory=dict)
    train_source: str = "options"
    margin: float = 0.01
    margin_type: str = "relative"
    init_shrink: float = 1.0
    serve_url: str | None = None
    token: str | None = None
    http_timeout_s: float = 120.0
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.log is None) == (self.dataset is None):
            msg = "give the new data as --log FILE (ingested like the champion's) or --dataset DIR, not both"
            raise InputError(msg)
        if self.margin_type not in MARGIN_TYPES:
            msg = f"unknown margin type {self.margin_type!r}; expected one of {', '.join(MARGIN_TYPES)}"
            raise InputError(msg)
        if (
            not math.isfinite(self.margin)
            or self.margin < 0
            or (self.margin_type == "relative" and self.margin >= 1)
        ):
            msg = f"--margin must be >= 0 (and < 1 when relative), got {self.margin}"
            raise InputError(msg)
        if self.serve_url is not None and not self.token:
            msg = "--serve-url needs the service's admin token (--token or RECSYS_ADMIN_TOKEN) to reload it"
            raise InputError(msg)


@dataclass(frozen=True)
class Decision:
    """The champion/challenger comparison on the new data.

    Args:
        metric: The deciding metric, e.g. ``recall@20``.
        champion: The champion's metrics at the metric's K.
        challenger: The challenger's metrics at the same K.
        threshold: The least value of ``metric`` the challenger needed.
        margin: The margin, as given.
        margin_type: ``relative`` or ``absolute``.
        promote: Whether the challenger passed.
        users: Users evaluated (with ground truth in the split).
        champion_coverage: How the champion met the new data: users known, folded in, given popular
            items; items known, and items it cannot recommend.
    """

    metric: str
    champion: dict[str, float]
    challenger: dict[str, float]
    threshold: float
    margin: float
    margin_type: str
    promote: bool
    users: int
    champion_coverage: dict[str, int]


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh did.

    Args:
        decision: The comparison.
        champion: ``{"artifact_id", "path"}`` of the champion.
        challenger: The same for the challenger, and ``training``: its epochs, steps, seconds, best epoch and
            what ended it (:func:`training_summary`).
        dataset: The new dataset directory.
        outcome: ``promoted``, ``already promoted``, ``not promoted`` or ``service failed``.
        detail: One line on what happened to the service (or the artifact).
        exit_code: See the module docstring.
    """

    decision: Decision
    champion: dict[str, str]
    challenger: dict[str, Any]
    dataset: str
    outcome: str
    detail: str
    exit_code: int


def refresh(cfg: RefreshConfig) -> RefreshResult:
    """Run (or resume) one refresh; see the module docstring.

    Raises:
        InputError: bad options or inputs, or a work directory of another refresh.
        ServiceError: the service is unreachable or serves neither the champion nor the challenger.
    """
    champion = load_parent(cfg.champion, cfg.init_shrink)
    workdir = cfg.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    state = _load_state(workdir, champion)
    promoted = state.get("promoted") or {}
    # Done already, unless only the artifact was promoted and now a service is named to reload.
    if promoted and (cfg.serve_url is None or promoted.get("to") == cfg.serve_url):
        logger.info("%s: this refresh was promoted already (%s); nothing to do", workdir, promoted)
        return _result(state, "already promoted", f"recorded in {workdir / STATE_FILE}", EXIT_PROMOTED)
    service = _Service(cfg.serve_url, cfg.token, cfg.http_timeout_s) if cfg.serve_url else None
    if service is not None:  # fail now, not after an hour of training
        served = service.served_id()
        expected = {champion.artifact_id, state.get("challenger", {}).get("artifact_id")}
        if served not in expected:
            msg = (
                f"{cfg.serve_url} serves artifact {served}, not the champion {champion.artifact_id} "
                f"({champion.artifact.path}); refusing to refresh a service that serves another model"
            )
            raise ServiceError(msg)

    logger.info("[1/4] dataset: %s", cfg.dataset or f"ingest {cfg.log} like {champion.artifact.path}'s")
    dataset_dir = cfg.dataset if cfg.dataset is not None else ingest_like(champion.artifact, cfg.log, workdir)
    dataset = load_dataset(dataset_dir)
    state["dataset"] = str(dataset_dir.resolve())

    logger.info("[2/4] train: warm start from %s on %s", champion.artifact.path, dataset_dir)
    challenger_dir = train_challenger(champion, dataset_dir, cfg, workdir / "challenger")
    challenger = load_artifact(challenger_dir)
    state["challenger"] = {
        "artifact_id": challenger.artifact_id,
        "path": str(challenger_dir.resolve()),
        "training": training_summary(challenger),
    }
    _save_state(workdir, state)

    logger.info("[3/4] evaluate: champion and challenger on the %s split of %s", SPLIT, dataset_dir)
    decision = compare(champion.artifact, challenger, dataset, margin=cfg.margin, margin_type=cfg.margin_type)
    atomic_write_text(workdir / DECISION_FILE, json.dumps(asdict(decision), indent=2) + "\n")
    state["decision"] = asdict(decision)
    _save_state(workdir, state)
    if not decision.promote:
        detail = f"the champion stays; the challenger is in {challenger_dir}"
        return _result(state, "not promoted", detail, EXIT_NOT_PROMOTED)

    logger.info("[4/4] promote: %s", cfg.serve_url or f"the artifact {challenger_dir} (no --serve-url)")
    detail = f"the new model is the artifact {challenger_dir} (recsys serve --artifact {challenger_dir})"
    if service is not None:
        try:
            detail = service.promote(challenger_dir, champion.artifact_id, challenger.artifact_id)
        except ServiceError as exc:
            return _result(state, "service failed", str(exc), EXIT_SERVICE_FAILED)
    state["promoted"] = {"at": _now(), "to": cfg.serve_url, "detail": detail}
    _save_state(workdir, state)
    return _result(state, "promoted", detail, EXIT_PROMOTED)


# ---------------------------------------------------------------------------------------------- stages


def ingest_like(champion: Artifact, log: Path | None, workdir: Path) -> Path:
    """Ingest ``log`` into ``workdir/dataset`` with the options of the champion's dataset.

    The options come from the champion's ``config.json`` (``dataset.options``), or, for an artifact written
    before it recorded them, from its dataset's ``meta.json`` if that is still there unchanged. A dataset
    of the same log already in ``workdir`` (a re-run) is kept.

    Raises:
        InputError: no options can be found, they cannot be reused (a preset split, fixed time cutoffs),
            or ``workdir/dataset`` holds another log's dataset.
    """
    assert log is not None
    out = workdir / "dataset"
    source = Path(log).resolve()
    if out.exists():
        inputs = [
            (i.get("path"), i.get("bytes")) for i in read_json_object(out / "meta.json").get("inputs", [])
        ]
        if inputs != [(str(source), source.stat().st_size if source.is_file() else None)]:
            names = ", ".join(f"{path} ({size} bytes)" for path, size in inputs)
            msg = f"{out} holds a dataset of {names}, not of {source} as it is now; use a fresh --workdir"
            raise InputError(msg)
        logger.info("reusing the dataset %s (ingested by an earlier run)", out)
        return out
    options = dict(_ingest_options(champion))
    if options.get("split") == "preset":
        msg = (
            f"{champion.path}: its dataset used the preset split (given train/test files); ingest the new "
            "version with `recsys ingest --split preset ...` and pass it with --dataset"
        )
        raise InputError(msg)
    if options.get("valid_cutoff") is not None or options.get("test_cutoff") is not None:
        msg = (
            f"{champion.path}: its dataset was split at fixed times (--valid-cutoff/--test-cutoff), which "
            "would put every new event in test; ingest the new version with new cutoffs and pass --dataset"
        )
        raise InputError(msg)
    spec = dict(options.pop("spec", None) or {})
    for name in ("input", "train", "test", "force"):
        options.pop(name, None)
    try:
        if spec.get("names") is not None:
            spec["names"] = tuple(spec["names"])
        config = IngestConfig(out=out, spec=LogSpec(**spec), input=source, **options)
    except TypeError as exc:
        msg = f"{champion.path / 'config.json'}: dataset.options do not fit this recsys's ingest: {exc}"
        raise InputError(msg) from exc
    ingest(config)
    return out


def _ingest_options(champion: Artifact) -> dict[str, Any]:
    recorded = champion.config.get("dataset") or {}
    if isinstance(recorded.get("options"), dict):
        return dict(recorded["options"])
    meta = Path(str(recorded.get("path", ""))) / "meta.json"
    if meta.is_file() and dataset_digest(meta.parent) == recorded.get("meta_sha256"):
        options = read_json_object(meta).get("options")
        if isinstance(options, dict):
            return options
    msg = (
        f"{champion.path / 'config.json'}: no ingest options recorded (dataset.options), and its dataset "
        f"{meta.parent} is gone or changed; ingest the new log with `recsys ingest` and pass --dataset"
    )
    raise InputError(msg)


def train_challenger(champion: Parent, dataset_dir: Path, cfg: RefreshConfig, out: Path) -> Path:
    """Warm-start train the challenger into ``out``; keep one an earlier run finished, resume one it began.

    Raises:
        InputError: ``out`` is a model of another champion or dataset, or the config does not fit.
    """
    digest = dataset_digest(dataset_dir)
    if out.exists():
        existing = load_artifact(out)
        parent = (existing.config.get("parent") or {}).get("artifact_id")
        trained_on = (existing.config.get("dataset") or {}).get("meta_sha256")
        if parent == champion.artifact_id and trained_on == digest:
            logger.info("reusing the challenger %s (trained by an earlier run)", out)
            return out
        msg = (
            f"{out} was trained from {parent} on dataset {str(trained_on)[:12]}, not from the champion "
            f"{champion.artifact_id} on {dataset_dir} ({digest[:12]}); use a fresh --workdir"
        )
        raise InputError(msg)
    train_cfg = champion.inherit_config(cfg.train, cfg.train_source)
    if selection_split(train_cfg.protocol) == SPLIT:
        msg = (
            f"refresh compares on the {SPLIT} split, which a {train_cfg.protocol}-protocol run selects on; "
            "train the challenger under the honest protocol (--protocol honest)"
        )
        raise InputError(msg)
    if train_cfg.refit == Refit.ALL:
        # The gate compares on test, which a refit on every split would have learned.
        if "refit" in cfg.train:
            msg = f"refresh gates on the {SPLIT} split, which --refit all learns; use --refit valid or none"
            raise InputError(msg)
        logger.info("the champion was refit on every split; the challenger refits on train + valid only")
        train_cfg = replace(train_cfg, refit=Refit.VALID.value)
    resume = (Path(f"{out}.ckpt") / CHECKPOINT_FILE).is_file()
    if resume:
        logger.info("resuming the challenger's training from %s.ckpt (an earlier run stopped)", out)
    train_artifact(dataset_dir, train_cfg, out, resume=resume, progress=cfg.progress, init_from=champion)
    return out


def training_summary(artifact: Artifact) -> dict[str, Any]:
    """What training the challenger cost and why it ended, from its ``metrics.json`` and ``log.jsonl``."""
    metrics = read_json_object(artifact.path / "metrics.json")
    history = read_history(artifact.path)
    config = artifact.config.get("config") or {}
    epochs, cap = int(metrics["epochs_run"]), int(config.get("epochs", 0))
    return {
        "epochs": epochs,
        "steps": int(history[-1]["step"]) if history else 0,
        "seconds": metrics.get("train_seconds"),
        "best_epoch": int(metrics["best_epoch"]),
        "selection": metrics.get(metrics["selection_split"], {}).get(metrics["metric"]),
        "metric": metrics["metric"],
        "ended_by": "the epoch cap" if epochs >= cap else "the stopping rule",
        "patience_steps": config.get("patience_steps"),
    }


class KnownItemsScorer:
    """Dot-product scores of a model on a dataset with items it does not know: those are never ranked.

    Args:
        user_emb: User embeddings in the dataset's user order, ``(U, d)``.
        item_emb: Item embeddings in its item order, ``(I, d)`` (any value for unknown items).
        known_items: Which items the model knows, ``(I,)`` bool.
    """

    def __init__(self, user_emb: Tensor, item_emb: Tensor, known_items: Tensor) -> None:
        self._scorer = EmbeddingScorer(user_emb, item_emb)
        self.device, self.dtype = self._scorer.device, self._scorer.dtype
        self._unknown = (~known_items).nonzero().flatten().to(self.device)

    def __call__(self, users: Tensor, out: Tensor) -> None:
        """Write the scores of ``users`` into ``out``, ``-inf`` at the unknown items."""
        self._scorer(users, out)
        out.index_fill_(1, self._unknown, -math.inf)


def champion_scorer(
    champion: Artifact, dataset: Dataset, training: Tensor
) -> tuple[KnownItemsScorer, dict[str, int]]:
    """The champion's scores for the new dataset's users and items, as it would serve them (by raw id).

    Known users keep their embeddings; a new user is folded in over their training items the champion knows
    (:meth:`Recommender.fold_in`); one who has none of those gets the champion's popular items (one extra
    column: 1 for that user, the item's training count for the item, 0 elsewhere, so their score is the
    count and nobody else's changes). Items the champion does not know are masked.

    Args:
        champion: The champion artifact.
        dataset: The new dataset.
        training: Its training pairs (whose items fold new users in).

    Returns:
        The scorer and the counts of known, folded-in and fallback users, known and unknown items.
    """
    users, items = raw_ids(dataset)
    user_match = match_ids(champion.users["raw_id"], users)
    item_match = match_ids(champion.items["raw_id"], items)
    known_users, known_items = user_match >= 0, item_match >= 0
    recommender = Recommender(champion)
    dim = champion.user_emb.size(1)
    user_emb = torch.zeros(dataset.num_users, dim + 1)
    item_emb = torch.zeros(dataset.num_items, dim + 1)
    user_emb[known_users, :dim] = champion.user_emb[user_match[known_users]]
    item_emb[known_items, :dim] = champion.item_emb[item_match[known_items]]
    item_emb[known_items, dim] = recommender.item_degree[item_match[known_items]].float()

    keep = ~known_users[training[0]] & known_items[training[1]]
    new_users, their_items = training[0][keep], item_match[training[1][keep]]
    order = torch.argsort(new_users, stable=True)
    new_users, their_items = new_users[order], their_items[order]
    folded, counts = torch.unique_consecutive(new_users, return_counts=True)
    for user, chunk in zip(folded.tolist(), their_items.split(counts.tolist()), strict=True):
        user_emb[user, :dim] = recommender.fold_in(torch.unique(chunk))
    fallback = ~known_users
    fallback[folded] = False
    user_emb[fallback, dim] = 1.0
    coverage = {
        "users_known": int(known_users.sum()),
        "users_folded_in": int(folded.numel()),
        "users_popular_fallback": int(fallback.sum()),
        "items_known": int(known_items.sum()),
        "items_unknown": int((~known_items).sum()),
    }
    return KnownItemsScorer(user_emb, item_emb, known_items), coverage


def compare(
    champion: Artifact, challenger: Artifact, dataset: Dataset, *, margin: float, margin_type: str
) -> Decision:
    """Score both on the dataset's test split (train and valid masked) and apply the gate.

    The metric is the challenger's selection metric (``config.metric``), at its K.

    Raises:
        InputError: the challenger was not trained on ``dataset``, or its metric is not a ranking metric.
    """
    check_dataset(challenger, dataset)
    metric = str(challenger.config["config"]["metric"])
    name, _, k = metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) < 1:
        msg = (
            f"the gate needs a ranking metric like recall@20 ({', '.join(METRIC_NAMES)} at K), got {metric!r}"
        )
        raise InputError(msg)
    protocol = challenger.protocol
    exclude = dataset.pairs(excluded_splits(SPLIT, protocol))
    training = dataset.pairs(training_splits(protocol))
    truth = GroundTruth(dataset.split(SPLIT), dataset.num_users, dataset.num_items, "cpu")
    old, coverage = champion_scorer(champion, dataset, training)
    new = EmbeddingScorer(challenger.user_emb, challenger.item_emb)
    results = [
        full_ranking(
            s, truth, num_users=dataset.num_users, num_items=dataset.num_items, exclude=exclude, ks=(int(k),)
        )
        for s in (old, new)
    ]
    keys = [f"{m}@{k}" for m in METRIC_NAMES]
    champion_metrics, challenger_metrics = ({key: r.metrics[key] for key in keys} for r in results)
    value = champion_metrics[metric]
    threshold = value - (margin * value if margin_type == "relative" else margin)
    return Decision(
        metric=metric,
        champion=champion_metrics,
        challenger=challenger_metrics,
        threshold=threshold,
        margin=margin,
        margin_type=margin_type,
        promote=challenger_metrics[metric] >= threshold,
        users=len(truth),
        champion_coverage=coverage,
    )


# --------------------------------------------------------------------------------------------- service


class _Service:
    """The few calls refresh makes to a running ``recsys serve`` (stdlib HTTP; no client library)."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def served_id(self) -> str:
        """The artifact id the service answers ``GET /model`` with."""
        return str(self._call("GET", "/model").get("artifact_id"))

    def promote(self, artifact: Path, champion_id: str, challenger_id: str) -> str:
        """Reload the service to ``artifact`` unless it serves it already; refuse if it serves another model.

        Returns:
            One line on what was done.
        """
        served = self.served_id()
        if served == challenger_id:
            return (
                f"{self.url} already serves {challenger_id} (reloaded by an earlier run); not reloaded again"
            )
        if served != champion_id:
            msg = (
                f"{self.url} now serves {served}, neither the champion {champion_id} nor the challenger "
                f"{challenger_id}; not reloading it"
            )
            raise ServiceError(msg)
        body = self._call("POST", "/admin/reload", {"artifact": str(artifact.resolve())})
        if body.get("artifact_id") != challenger_id:
            msg = f"{self.url}: the reload answered artifact {body.get('artifact_id')}, not {challenger_id}"
            raise ServiceError(msg)
        return f"{self.url} reloaded: every replica serves {challenger_id} (was {champion_id})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token and path.startswith("/admin/"):
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            msg = f"{method} {self.url}{path}: HTTP {exc.code}: {detail}"
            raise ServiceError(msg) from exc
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            msg = f"{method} {self.url}{path}: no answer from the service ({first_line(exc)})"
            raise ServiceError(msg) from exc
        if not isinstance(answer, dict):
            msg = f"{method} {self.url}{path}: expected a JSON object, got {type(answer).__name__}"
            raise ServiceError(msg)
        return answer


# ------------------------------------------------------------------------------------------ state, text


def _load_state(workdir: Path, champion: Parent) -> dict[str, Any]:
    """The work directory's state, which must be of this champion (a new one is started otherwise)."""
    path = workdir / STATE_FILE
    if not path.is_file():
        return {
            "champion": {"artifact_id": champion.artifact_id, "path": str(champion.artifact.path.resolve())}
        }
    state = read_json_object(path)
    recorded = (state.get("champion") or {}).get("artifact_id")
    if recorded != champion.artifact_id:
        msg = (
            f"{path}: this work directory refreshes champion {recorded}, not {champion.artifact_id} "
            f"({champion.artifact.path}); use a fresh --workdir"
        )
        raise InputError(msg)
    return state


def _save_state(workdir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(workdir / STATE_FILE, json.dumps({**state, "updated_at": _now()}, indent=2) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _result(state: dict[str, Any], outcome: str, detail: str, exit_code: int) -> RefreshResult:
    return RefreshResult(
        decision=Decision(**state["decision"]),
        champion=state["champion"],
        challenger=state["challenger"],
        dataset=state["dataset"],
        outcome=outcome,
        detail=detail,
        exit_code=exit_code,
    )


def format_result(result: RefreshResult) -> str:
    """The decision table, the rule and the outcome, as printed by ``recsys refresh``."""
    d = result.decision
    names = list(d.champion)
    width = max(len(n) for n in names) + 2
    lines = [
        f"refresh on {result.dataset} ({SPLIT} split, {d.users:,} users; train and valid masked)",
        f"champion   {result.champion['artifact_id']}  {result.champion['path']}",
        f"challenger {result.challenger['artifact_id']}  {result.challenger['path']} (warm-started)",
        *_describe_training(result.challenger.get("training")),
        "",
        f"{'':<{width}}{'champion':>10}{'challenger':>12}{'change':>10}",
    ]
    for name in names:
        old, new = d.champion[name], d.challenger[name]
        mark = "   <- decides" if name == d.metric else ""
        lines.append(f"{name:<{width}}{old:>10.4f}{new:>12.4f}{new - old:>+10.4f}{mark}")
    c = d.champion_coverage
    lines += [
        "",
        f"champion on the new data: users {c['users_known']:,} known, {c['users_folded_in']:,} folded in, "
        f"{c['users_popular_fallback']:,} popular fallback; items {c['items_known']:,} known, "
        f"{c['items_unknown']:,} it cannot recommend",
    ]
    slack = (
        f"{d.margin:.2%} of it (relative margin)"
        if d.margin_type == "relative"
        else f"{d.margin:g} (absolute margin)"
    )
    lines.append(f"rule: promote if challenger {d.metric} >= champion - {slack} = {d.threshold:.4f}")
    verdict = "PROMOTE" if d.promote else "KEEP THE CHAMPION"
    lines.append(f"decision: {verdict} (challenger {d.challenger[d.metric]:.4f} vs {d.threshold:.4f})")
    lines.append(f"outcome: {result.outcome}: {result.detail} (exit code {result.exit_code})")
    return "\n".join(lines)


def _describe_training(training: dict[str, Any] | None) -> list[str]:
    """The challenger's training in one line (none for a state written before it was recorded)."""
    if not training:
        return []
    seconds = "" if training["seconds"] is None else f" in {training['seconds']:,.0f} s"
    ended = training["ended_by"]
    if ended == "the stopping rule":
        ended += f" ({training['patience_steps']:,} steps without a better {training['metric']})"
    return [
        f"           trained {training['epochs']} epochs ({training['steps']:,} steps){seconds}; best epoch "
        f"{training['best_epoch']} (valid {training['metric']} {training['selection']:.4f}); ended by {ended}"
    ]
