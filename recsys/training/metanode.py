"""Full-population InfoNCE negatives for SimGCL/XSimGCL: spherical k-means, the per-run state, the probe.

The same state serves the recommendation softmax (``rec_loss`` softmax or bsl, :class:`RecNegatives`): its
popularity for the log-Q correction, its shared negatives, and meta-nodes over every item for its
``metanode`` denominator.

Design: ``docs/metanode.md``. The losses themselves are the pure functions
:func:`recsys.training.losses.info_nce_full` and :func:`recsys.training.losses.info_nce_metanode`; this module
holds what they need between steps: the hard cluster assignment of every user and every item (refreshed by
spherical k-means every ``metanode_refresh_epochs`` epochs), the key weights, and the probe's running
averages.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.config import CL_NEGATIVES, REC_DENOMINATORS, TrainConfig
from recsys.data.sampling import SharedNegatives
from recsys.models.base import Views
from recsys.training.losses import info_nce, info_nce_full, info_nce_metanode

WARM_ITERS = 3  # Lloyd iterations of a warm-started refresh
MAX_FIT_NODES = 200_000  # above this many nodes, k-means is fitted on a subsample ...
FIT_SAMPLE = 100_000  # ... of this many random nodes, then every node is assigned once
_SIDES = ("user", "item")


class KMeansResult(NamedTuple):
    """Spherical k-means output: unit centroids ``(K, d)`` and the cluster of every node ``(N,)`` (int64)."""

    centroids: Tensor
    assignment: Tensor


@torch.no_grad()
def assign_clusters(x: Tensor, centroids: Tensor, chunk: int = 16_384) -> Tensor:
    """Index of the most cosine-similar centroid for every row of ``x``, in chunks of rows.

    Args:
        x: Points, shape ``(N, d)`` (normalised here).
        centroids: Unit centroids, shape ``(K, d)``.
        chunk: Rows per ``(chunk, K)`` similarity block, which bounds the peak memory.

    Returns:
        Cluster ids, shape ``(N,)``, int64.
    """
    x = F.normalize(x, dim=1)
    return torch.cat([(part @ centroids.T).argmax(1) for part in x.split(chunk)])


@torch.no_grad()
def spherical_kmeans(
    x: Tensor,
    num_clusters: int,
    *,
    generator: torch.Generator,
    iters: int = 10,
    init: Tensor | None = None,
    max_fit_nodes: int = MAX_FIT_NODES,
    fit_sample: int = FIT_SAMPLE,
) -> KMeansResult:
    """Spherical k-means (Lloyd): cosine assignment, then mean-then-normalise centroid update.

    K is clipped to N. Without ``init`` the centroids start at K distinct random nodes; with it they are
    warm-started. A cluster that ends an update empty is re-seeded at a random node. When N exceeds
    ``max_fit_nodes`` the centroids are fitted on ``fit_sample`` random nodes and all N nodes are then
    assigned in one pass. Runs on ``x``'s device; random draws come from ``generator`` (on any device).

    Args:
        x: Points, shape ``(N, d)``; rows are normalised here (a zero row stays zero).
        num_clusters: K (clipped to N).
        generator: Seeded generator for the initial centroids, the re-seeding and the subsample.
        iters: Lloyd iterations (assignment + update); 0 with ``init`` only assigns.
        init: Optional warm-start centroids, shape ``(min(K, N), d)``.
        max_fit_nodes: Subsample above this N.
        fit_sample: Size of that subsample.

    Returns:
        The unit centroids ``(K', d)`` with ``K' = min(num_clusters, N)``, and the assignment of all N nodes.
    """
    if x.dim() != 2 or x.size(0) == 0:
        msg = f"x must be a non-empty (N, d) matrix, got shape {tuple(x.shape)}"
        raise ValueError(msg)
    if num_clusters < 1 or iters < 0:
        msg = f"num_clusters must be >= 1 and iters >= 0, got {num_clusters} and {iters}"
        raise ValueError(msg)
    n = x.size(0)
    k = min(num_clusters, n)
    unit = F.normalize(x, dim=1)

    def draw(size: int, high: int) -> Tensor:
        return torch.randperm(high, generator=generator, device=generator.device)[:size].to(x.device)

    fit = unit[draw(fit_sample, n)] if n > max_fit_nodes else unit
    if init is None:
        centroids = fit[draw(k, fit.size(0))].clone()
    elif init.shape == (k, x.size(1)):
        centroids = F.normalize(init.to(device=x.device, dtype=x.dtype), dim=1)
    else:
        msg = f"init must have shape ({k}, {x.size(1)}) (K clipped to N), got {tuple(init.shape)}"
        raise ValueError(msg)
    for _ in range(iters):
        labels = assign_clusters(fit, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, fit)
        centroids = F.normalize(sums, dim=1)
        empty = torch.bincount(labels, minlength=k) == 0
        num_empty = int(empty.sum())
        if num_empty:
            seeds = torch.randint(fit.size(0), (num_empty,), generator=generator, device=generator.device)
            centroids[empty] = fit[seeds.to(x.device)]
    return KMeansResult(centroids, assign_clusters(unit, centroids))


class _Clusters(NamedTuple):
    assignment: Tensor  # (N,) cluster ids
    num_clusters: int  # K, clipped to N
    order: Tensor  # (N,) argsort of the assignment: the keys grouped by cluster


class ContrastiveNegatives:
    """Per-run state of the InfoNCE negatives, and the contrastive loss of one side given that state.

    One object per training run, created by :func:`recsys.training.run.prepare_run` and passed to the
    objectives by keyword. ``in_batch`` (the default) and ``full`` hold no state; ``metanode`` holds each
    side's k-means centroids and assignment, refreshed by :meth:`refresh` at the start of an epoch (a no-op
    in the other modes), and saved in checkpoints through :meth:`state_dict`.

    It also carries the run's other negatives, those of the recommendation softmax (``rec``, a
    :class:`RecNegatives` when ``rec_loss`` is not ``bpr``), and refreshes, reports and checkpoints them with
    its own: the run keeps one object of negatives, so the loop and the checkpoints need not know which loss
    has state.

    Args:
        mode: ``in_batch`` (SimGCL as published), ``full`` (exact full-negative InfoNCE) or ``metanode``.
        num_clusters: K per side, clipped to N.
        second_order: Use the second-order meta-node estimator.
        refresh_epochs: Refresh the clusters every this many epochs (epochs 1, 1 + r, 1 + 2r, ...).
        kmeans_iters: Lloyd iterations of the first refresh; later ones run ``min(3, kmeans_iters)``
            iterations warm-started from the previous centroids.
        full_below: A side with at most this many nodes uses the exact full loss, and is never clustered.
        detach: No gradient through the meta-nodes' means and variances (anchors and positives only).
        key_weights: Optional key weights ω per side ``(users, items)``, shapes ``(U,)`` and ``(I,)``;
            used by ``full`` and ``metanode``.
        probe_every: In ``metanode`` mode, every this many steps also compute the exact loss on the batch
            and record the gap and the gradient cosine (see :meth:`epoch_stats`); 0 turns it off. Sides
            that use the exact loss (``full_below``) are not probed.
        generator: Seeded generator for k-means (needed for ``metanode``).
        keys: Which view the meta-nodes cluster: ``contrastive`` (XSimGCL's layer l*, else the final
            output: the InfoNCE keys) or ``final`` (the output the recommendation loss scores).
        sides: The sides clustered and probed: users 0, items 1.
        rec: The recommendation softmax's negatives, or ``None`` (BPR).
    """

    def __init__(
        self,
        mode: str = "in_batch",
        *,
        num_clusters: int = 1024,
        second_order: bool = True,
        refresh_epochs: int = 1,
        kmeans_iters: int = 10,
        full_below: int = 8192,
        detach: bool = False,
        key_weights: tuple[Tensor, Tensor] | None = None,
        probe_every: int = 0,
        generator: torch.Generator | None = None,
        keys: str = "contrastive",
        sides: tuple[int, ...] = (0, 1),
        rec: RecNegatives | None = None,
    ) -> None:
        if mode not in CL_NEGATIVES:
            msg = f"mode must be one of {', '.join(CL_NEGATIVES)}, got {mode!r}"
            raise ValueError(msg)
        if keys not in ("contrastive", "final") or not set(sides) <= {0, 1}:
            msg = f"keys must be 'contrastive' or 'final' and sides among (0, 1), got {keys!r}, {sides}"
            raise ValueError(msg)
        if mode == "metanode" and generator is None:
            msg = "mode 'metanode' needs a seeded generator for k-means"
            raise ValueError(msg)
        self.mode, self.num_clusters, self.second_order = mode, num_clusters, second_order
        self.refresh_epochs, self.kmeans_iters, self.full_below = refresh_epochs, kmeans_iters, full_below
        self.detach = detach
        self.key_weights, self.probe_every, self.generator = key_weights, probe_every, generator
        self.keys, self.sides, self.rec = keys, sides, rec
        self.centroids: list[Tensor | None] = [None, None]
        self.assignment: list[Tensor | None] = [None, None]
        self.steps = [0, 0]  # loss calls per side, for the probe schedule
        self._orders: list[tuple[Tensor, Tensor] | None] = [None, None]  # (assignment, its argsort) per side
        self._probe_sums: list[Tensor] = []  # (gap, cos) per probed side this epoch

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, train_pairs: Tensor, num_users: int, num_items: int
    ) -> ContrastiveNegatives:
        """The state a run of ``cfg`` needs; degree weights come from the training pairs ``(2, E)``.

        ``ω_v = N·deg(v)/Σ deg`` per side, so the weights average 1 (a node without training
        interactions gets 0 and is no negative). The k-means generator is seeded with ``cfg.seed + 3``
        on the pairs' device.
        """
        weights = None
        if cfg.metanode_key_weight == "degree":
            sizes = (num_users, num_items)
            degrees = [torch.bincount(train_pairs[s], minlength=sizes[s]).double() for s in range(2)]
            user_w, item_w = (sizes[s] * d / d.sum() for s, d in enumerate(degrees))
            weights = (user_w.float(), item_w.float())
        generator = torch.Generator(device=train_pairs.device).manual_seed(cfg.seed + 3)
        return cls(
            cfg.cl_negatives,
            num_clusters=cfg.metanode_clusters,
            second_order=cfg.metanode_second_order,
            refresh_epochs=cfg.metanode_refresh_epochs,
            kmeans_iters=cfg.metanode_kmeans_iters,
            full_below=cfg.metanode_full_below,
            detach=cfg.metanode_detach,
            key_weights=weights,
            probe_every=cfg.metanode_probe_every,
            generator=generator,
            rec=RecNegatives.from_config(cfg, train_pairs, num_items),
        )

    @torch.no_grad()
    def refresh(self, model: nn.Module, adj: Tensor | None, epoch: int) -> None:
        """Re-cluster each side's keys if ``epoch`` (1-based) is a refresh epoch; otherwise a no-op.

        Also a no-op unless the mode is ``metanode``, and for a side small enough for the exact loss.
        The recommendation softmax's meta-nodes (``rec``) are refreshed here too, from the same pass.

        The keys clustered are the model's clean (unperturbed) contrastive view, ``views.cl`` when the
        model has one (XSimGCL: layer l*) and ``views.final`` otherwise (SimGCL): the noise-free version of
        the vectors the meta-nodes average. With ``keys="final"``, ``views.final``.
        """
        inner = None if self.rec is None else self.rec.metanode
        due = [state for state in (self, inner) if state is not None and state._due(epoch)]
        if due:
            views = model(adj)
            for state in due:
                state._recluster(views)

    def _due(self, epoch: int) -> bool:
        return self.mode == "metanode" and (epoch - 1) % self.refresh_epochs == 0

    def _recluster(self, views: Views) -> None:
        assert self.generator is not None
        keys = views.cl if self.keys == "contrastive" and views.cl is not None else views.final
        for side in self.sides:
            x = keys[side]
            if x.size(0) <= self.full_below:
                continue
            warm = self.centroids[side]
            iters = self.kmeans_iters if warm is None else min(WARM_ITERS, self.kmeans_iters)
            result = spherical_kmeans(
                x.detach(), self.num_clusters, generator=self.generator, iters=iters, init=warm
            )
            self.centroids[side], self.assignment[side] = result

    def loss(self, view_a: Tensor, view_b: Tensor, nodes: Tensor, side: int, temperature: float) -> Tensor:
        """InfoNCE of one side: anchors ``view_a[nodes]``, negatives as ``mode`` says.

        Args:
            view_a: First view of all N nodes of the side, shape ``(N, d)``.
            view_b: Second view of the same nodes, shape ``(N, d)``: the keys.
            nodes: The batch's unique nodes of this side, shape ``(B,)``.
            side: 0 for users, 1 for items (selects the assignment and the key weights).
            temperature: τ.

        Returns:
            The loss, a 0-dim tensor. ``in_batch`` is exactly :func:`recsys.training.losses.info_nce` on the
            batch.
        """
        if self.mode == "in_batch":
            return info_nce(view_a[nodes], view_b[nodes], temperature)
        return self.anchored_loss(view_a[nodes], view_b, nodes, side, temperature)

    def anchored_loss(
        self, anchors: Tensor, keys: Tensor, positive_index: Tensor, side: int, temperature: float
    ) -> Tensor:
        """InfoNCE of ``anchors`` against every key of one side, exact (``full``) or through the meta-nodes.

        Args:
            anchors: The anchor rows, shape ``(B, d)``: a side's nodes in the first view, or (for the
                recommendation softmax) the batch's users.
            keys: Every node of the side, shape ``(N, d)``.
            positive_index: Row of each anchor's positive in ``keys``, shape ``(B,)``.
            side: 0 for users, 1 for items (selects the assignment and the key weights).
            temperature: τ.

        Returns:
            :func:`recsys.training.losses.info_nce_full` or its meta-node estimate, a 0-dim tensor.
        """
        weight = None if self.key_weights is None else self.key_weights[side]
        if self.mode == "full" or keys.size(0) <= self.full_below:
            return info_nce_full(anchors, keys, positive_index, temperature, weight)
        assignment, centroids = self.assignment[side], self.centroids[side]
        if assignment is None or centroids is None:
            msg = f"no {_SIDES[side]} clusters yet: call refresh(model, adj, epoch) before the first step"
            raise RuntimeError(msg)
        clusters = _Clusters(assignment, centroids.size(0), self._order(side, assignment))
        self.steps[side] += 1
        if self.probe_every and self.steps[side] % self.probe_every == 0:
            self._probe(anchors, keys, positive_index, clusters, weight, temperature)
        return self._metanode(anchors, keys, positive_index, clusters, weight, temperature)

    def _order(self, side: int, assignment: Tensor) -> Tensor:
        """``argsort(assignment)``, computed once per assignment (a refresh or a load makes a new one)."""
        cached = self._orders[side]
        if cached is None or cached[0] is not assignment:
            cached = (assignment, torch.argsort(assignment, stable=True))
            self._orders[side] = cached
        return cached[1]

    def _metanode(
        self,
        anchors: Tensor,
        keys: Tensor,
        nodes: Tensor,
        clusters: _Clusters,
        weight: Tensor | None,
        temperature: float,
    ) -> Tensor:
        return info_nce_metanode(
            anchors,
            keys,
            nodes,
            clusters.assignment,
            temperature,
            num_clusters=clusters.num_clusters,
            second_order=self.second_order,
            key_weight=weight,
            detach_keys=self.detach,
            order=clusters.order,
        )

    def _probe(
        self,
        anchors: Tensor,
        keys: Tensor,
        nodes: Tensor,
        clusters: _Clusters,
        weight: Tensor | None,
        temperature: float,
    ) -> None:
        """Gap ``L_full − L_meta`` and cosine of the two losses' gradients w.r.t. the anchor rows.

        Runs on detached copies, so the training gradients are untouched.
        """
        leaf = anchors.detach().requires_grad_(True)
        with torch.enable_grad():
            full = info_nce_full(leaf, keys.detach(), nodes, temperature, weight)
            (grad_full,) = torch.autograd.grad(full, leaf)
            meta = self._metanode(leaf, keys.detach(), nodes, clusters, weight, temperature)
            (grad_meta,) = torch.autograd.grad(meta, leaf)
        cos = F.cosine_similarity(grad_full.flatten(), grad_meta.flatten(), dim=0)
        self._probe_sums.append(torch.stack([(full - meta).detach(), cos]))

    def epoch_stats(self) -> dict[str, float]:
        """Mean probe gap and gradient cosine since the last call (``{}`` when nothing was probed); resets.

        The recommendation softmax's probe, if any, follows as ``rec_probe_gap`` and ``rec_probe_grad_cos``.
        """
        stats = {} if self.rec is None else self.rec.epoch_stats()
        if not self._probe_sums:
            return stats
        gap, cos = torch.stack(self._probe_sums).mean(0).tolist()
        self._probe_sums = []
        return {"probe_gap": round(gap, 6), "probe_grad_cos": round(cos, 6), **stats}

    def state_dict(self) -> dict[str, Any]:
        """The clusters, the step counters and the generator, as tensors (``weights_only`` loadable)."""
        state: dict[str, Any] = {"steps": torch.tensor(self.steps)}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        for side, name in enumerate(_SIDES):
            if self.centroids[side] is not None:
                state[f"{name}_centroids"] = self.centroids[side]
                state[f"{name}_assignment"] = self.assignment[side]
        if self.rec is not None:
            state["rec"] = self.rec.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (tensors move to the generator's device)."""
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        self.steps = [int(v) for v in state.get("steps", torch.zeros(2)).tolist()]
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
        for side, name in enumerate(_SIDES):
            centroids = state.get(f"{name}_centroids")
            assignment = state.get(f"{name}_assignment")
            self.centroids[side] = None if centroids is None else centroids.to(device)
            self.assignment[side] = None if assignment is None else assignment.to(device)
        if self.rec is not None:
            self.rec.load_state_dict(state.get("rec", {}))


class RecNegatives:
    r"""Per-run state of the recommendation softmax's negatives (``rec_loss`` softmax or bsl).

    The shared negatives of a batch and their log-Q correction (:class:`recsys.data.sampling.SharedNegatives`,
    from the items' training popularity), and for the ``metanode`` denominator the meta-nodes of every item:
    an item-side :class:`ContrastiveNegatives` whose keys are the final item embeddings the loss scores.

    Args:
        shared: The shared negatives (M items per batch; with M = 0 the in-batch ones alone).
        denominator: ``sampled`` (in-batch and shared items), ``full`` (every item) or ``metanode``.
        metanode: The items' meta-node state, for ``metanode``; else ``None``.
    """

    def __init__(
        self,
        shared: SharedNegatives,
        *,
        denominator: str = "sampled",
        metanode: ContrastiveNegatives | None = None,
    ) -> None:
        if denominator not in REC_DENOMINATORS:
            msg = f"denominator must be one of {', '.join(REC_DENOMINATORS)}, got {denominator!r}"
            raise ValueError(msg)
        if (denominator == "metanode") != (metanode is not None):
            msg = "the metanode denominator needs its meta-node state, and only it has one"
            raise ValueError(msg)
        self.shared, self.denominator, self.metanode = shared, denominator, metanode

    @classmethod
    def from_config(cls, cfg: TrainConfig, train_pairs: Tensor, num_items: int) -> RecNegatives | None:
        """The state a run of ``cfg`` needs (``None`` for BPR), from the training pairs ``(2, E)``.

        The meta-nodes take the ``metanode_*`` options (clusters, order, refresh, k-means, probe; key
        weights uniform: the softmax is over every item once); their k-means generator is seeded with
        ``cfg.seed + 4`` on the pairs' device.
        """
        if cfg.rec_loss == "bpr":
            return None
        metanode = None
        if cfg.rec_denominator == "metanode":
            metanode = ContrastiveNegatives(
                "metanode",
                num_clusters=cfg.metanode_clusters,
                second_order=cfg.metanode_second_order,
                refresh_epochs=cfg.metanode_refresh_epochs,
                kmeans_iters=cfg.metanode_kmeans_iters,
                full_below=cfg.metanode_full_below,
                detach=cfg.metanode_detach,
                probe_every=cfg.metanode_probe_every,
                generator=torch.Generator(device=train_pairs.device).manual_seed(cfg.seed + 4),
                keys="final",
                sides=(1,),
            )
        shared = SharedNegatives.from_pairs(train_pairs, num_items, cfg.rec_negatives, cfg.rec_pool)
        return cls(shared, denominator=cfg.rec_denominator, metanode=metanode)

    def metanode_loss(
        self, anchors: Tensor, keys: Tensor, positive_index: Tensor, temperature: float
    ) -> Tensor:
        """The softmax over every item through the meta-nodes (:meth:`ContrastiveNegatives.anchored_loss`).

        Args:
            anchors: The batch's users, shape ``(B, d)``.
            keys: Every item's final embedding, shape ``(I, d)``.
            positive_index: Each row's positive item, shape ``(B,)``.
            temperature: τ.
        """
        assert self.metanode is not None, "the metanode denominator only"
        return self.metanode.anchored_loss(anchors, keys, positive_index, 1, temperature)

    def epoch_stats(self) -> dict[str, float]:
        """The meta-node probe's means since the last call, as ``rec_probe_gap``, ``rec_probe_grad_cos``."""
        if self.metanode is None:
            return {}
        return {f"rec_{name}": value for name, value in self.metanode.epoch_stats().items()}

    def state_dict(self) -> dict[str, Any]:
        """The meta-node state (clusters, step counter, k-means generator); nothing else changes in a run."""
        return {} if self.metanode is None else self.metanode.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        if self.metanode is not None:
            self.metanode.load_state_dict(state)
