"""The Ray Serve application: a thin FastAPI wrapper over :class:`recsys.inference.recommend.Recommender`.

All recommendation logic lives in the plain class; this module maps HTTP to it: validation and status
codes, ``@serve.batch`` to turn concurrent single-user requests into one matrix product, a health check,
and hot reload of the artifact behind a bearer token, which reaches every replica through the
:mod:`serving.registry` actor. Build it with :func:`build_app` (also the ``import_path`` target of a Serve
config file: ``serving.app:build_app``).
"""

import asyncio
import contextlib
import logging
import secrets
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.config import DeploymentActorConfig

from recsys.errors import InputError
from recsys.inference.recommend import Recommendation, Recommender, UnknownIdError
from serving.registry import REGISTRY_NAME, ArtifactRegistry, Target
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    Fallback,
    Health,
    ItemScore,
    ModelInfo,
    NewUserRequest,
    NewUserResponse,
    ParentArtifact,
    ReloadRequest,
    SimilarResponse,
    UserRecommendation,
)

logger = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 30.0  # a replica's long poll on the registry: returns at once on a reload
RETRY_S = 2.0  # pause before following the registry again after an error


class ServeArgs(BaseModel):
    """Arguments of the application (the app builder's typed args; also the Serve config's ``args``)."""

    artifact: str = Field(description="artifact directory written by `recsys train`")
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_batch_users: int = Field(1000, ge=1, description="largest number of users in POST /recommend")
    admin_token: str | None = Field(None, description="bearer token of POST /admin/reload; unset: disabled")
    batching: bool = Field(True, description="batch concurrent GET /recommend/{user_id} into one matmul")
    max_batch_size: int = Field(64, ge=1, description="most requests per batch")
    batch_wait_timeout_s: float = Field(0.002, ge=0, description="how long a batch waits to fill")
    num_replicas: int = Field(1, ge=1, description="replicas of the deployment")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica")
    max_ongoing_requests: int = Field(128, ge=1, description="concurrent requests per replica")
    reload_timeout_s: float = Field(60.0, gt=0, description="how long a reload waits for every replica")
    retrieval: Literal["exact", "ivf", "hnsw"] = Field(
        "exact", description="top-k search: exact, or an approximate faiss index for millions of items"
    )
    retrieval_nprobe: int = Field(32, ge=1, description="ivf: index cells scanned per query (recall/speed)")
    retrieval_ef_search: int = Field(128, ge=1, description="hnsw: search breadth (recall/speed)")

    def load(self, path: str) -> Recommender:
        """The recommender over the artifact at ``path``, with this service's retrieval."""
        options = {"ivf": {"nprobe": self.retrieval_nprobe}, "hnsw": {"ef_search": self.retrieval_ef_search}}
        return Recommender.from_artifact(
            path, retrieval=self.retrieval, retrieval_options=options.get(self.retrieval)
        )


api = FastAPI(
    title="recsys",
    description="Top-k recommendations from a graph contrastive recommender (LightGCN / SimGCL / XSimGCL).",
)


@api.exception_handler(UnknownIdError)
async def _unknown_id(_: Request, exc: UnknownIdError) -> JSONResponse:
    return JSONResponse(
        status_code=404, content={"detail": str(exc), "unknown_ids": exc.ids, "kind": exc.kind}
    )


@api.exception_handler(InputError)
async def _bad_input(_: Request, exc: InputError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": str(exc)})


def item_scores(rec: Recommendation) -> list[ItemScore]:
    """The API form of a recommendation: raw item ids with their scores, best first."""
    return [ItemScore(item_id=i, score=s) for i, s in zip(rec.items, rec.scores, strict=True)]


async def _require_admin(
    authorization: str | None = Header(None, description="`Bearer <admin token>`"),
) -> None:
    """Check the admin token before the body is parsed, so an unauthenticated caller learns nothing more."""
    service = serve.get_replica_context().servable_object  # how Serve itself finds the replica's instance
    service.authorize(authorization)  # type: ignore[attr-defined]


async def _reload_request(request: Request) -> ReloadRequest | None:
    """The reload body, parsed only after the token check (FastAPI would parse a declared body before it)."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return ReloadRequest.model_validate_json(raw)
    except ValidationError as exc:
        # Not the errors' "input": it may be undecodable bytes, which the 422 handler cannot encode.
        errors = [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise RequestValidationError(errors, body=raw.decode(errors="replace")) from exc


_RELOAD_BODY = {"content": {"application/json": {"schema": ReloadRequest.model_json_schema()}}}


@serve.deployment
@serve.ingress(api)
class RecommenderService:
    """One replica: a loaded :class:`Recommender` and the HTTP routes over it.

    The replica serves whatever artifact the deployment's :class:`~serving.registry.ArtifactRegistry`
    names: the one it was deployed with, or the latest one published by a reload (also when the replica
    starts after that reload).
    """

    async def __init__(self, args: ServeArgs) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        self.args = args
        context = serve.get_replica_context()
        self._replica, self._num_replicas = context.replica_id.unique_id, context.world_size
        self._registry = serve.get_deployment_actor(REGISTRY_NAME)
        self._target: Target = await self._registry.current.remote()
        self.recommender = await asyncio.to_thread(self.args.load, self._target[1])
        self._preloaded: tuple[str, Recommender] | None = None  # loaded by a reload on this replica
        # @serve.batch adds these setters to the method; mypy sees only the undecorated signature.
        self._batched_recommend.set_max_batch_size(args.max_batch_size)  # type: ignore[attr-defined]
        self._batched_recommend.set_batch_wait_timeout_s(args.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._follower = asyncio.get_running_loop().create_task(self._follow_registry())
        logger.info("serving %s (%s)", self._target[1], self.recommender.model_version)

    def check_health(self) -> None:
        """Serve's replica health check: a model is loaded and the replica still follows reloads."""
        if self.recommender.num_items < 1:
            msg = "no model loaded"
            raise RuntimeError(msg)
        if self._follower.done():
            msg = "the replica stopped following the artifact registry"
            raise RuntimeError(msg)

    async def _follow_registry(self) -> None:
        """Swap to each artifact the registry publishes: load it fully, then swap one reference.

        Requests keep being answered by the old model while the new one loads. A failed load (the directory
        vanished or broke after the reload checked it) keeps the old model and retries after a pause.
        """
        while True:
            try:
                target = await self._registry.watch.remote(self._replica, self._target[0], WATCH_TIMEOUT_S)
                if target[0] == self._target[0]:
                    continue
                preloaded, self._preloaded = self._preloaded, None
                if preloaded is not None and preloaded[0] == target[1]:
                    recommender = preloaded[1]
                else:
                    recommender = await asyncio.to_thread(self.args.load, target[1])
            except Exception:  # a registry restart, an artifact that stopped loading: keep following
                logger.exception("cannot follow the artifact registry; retrying in %s s", RETRY_S)
                await asyncio.sleep(RETRY_S)
                with contextlib.suppress(ValueError):  # not registered again yet: retry later
                    self._registry = serve.get_deployment_actor(REGISTRY_NAME)
                continue
            self.recommender, self._target = recommender, target
            logger.info("now serving %s (%s)", target[1], recommender.model_version)

    def authorize(self, authorization: str | None) -> None:
        """Raise 403 when admin endpoints are disabled, 401 unless ``authorization`` is the bearer token."""
        if self.args.admin_token is None:
            raise HTTPException(
                status_code=403, detail="admin endpoints are disabled (start with --admin-token)"
            )
        scheme, _, token = (authorization or "").partition(" ")
        # Bytes: compare_digest refuses non-ASCII str, and a header may carry any latin-1 text.
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), self.args.admin_token.encode()
        ):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.args.max_k:
            raise HTTPException(status_code=422, detail=f"k must be between 1 and {self.args.max_k}, got {k}")

    @serve.batch  # sized in __init__ from ServeArgs, with the setters Serve documents for that
    async def _batched_recommend(self, queries: list[tuple[str, int, bool]]) -> list[Recommendation | None]:
        """Single-user queries batched: one matrix product per ``exclude_seen`` value; None = unknown."""
        recommender = self.recommender  # one model for the whole batch, even if a reload swaps it meanwhile
        out: list[Recommendation | None] = [None] * len(queries)
        for exclude_seen in (True, False):
            picked = [
                (n, user)
                for n, (user, _, flag) in enumerate(queries)
                if flag is exclude_seen and recommender.user_indices([user])[0] is not None
            ]
            if not picked:
                continue
            k = max(queries[n][1] for n, _ in picked)
            results = recommender.recommend([u for _, u in picked], k, exclude_seen=exclude_seen)
            for (n, _), rec in zip(picked, results, strict=True):
                keep = queries[n][1]
                out[n] = Recommendation(rec.items[:keep], rec.scores[:keep])
        return out

    @api.get("/recommend/{user_id}", response_model=UserRecommendation)
    async def recommend_user(
        self,
        user_id: str,
        k: int = Query(20, description="list length"),
        exclude_seen: bool = Query(True, description="drop the user's training items"),
        fallback: Annotated[Fallback | None, Query(description="'popular': answer unknown users")] = None,
    ) -> UserRecommendation:
        """Top-k items for one known user (404 for an unknown one, unless ``fallback=popular``)."""
        self._check_k(k)
        recommender = self.recommender
        if self.args.batching:
            rec = await self._batched_recommend((user_id, k, exclude_seen))
        else:
            known = recommender.user_indices([user_id])[0] is not None
            rec = recommender.recommend([user_id], k, exclude_seen=exclude_seen)[0] if known else None
        if rec is None:
            if fallback == "popular":
                popular = recommender.popular(k)
                return UserRecommendation(
                    user_id=user_id,
                    items=item_scores(popular),
                    model_version=recommender.model_version,
                    fallback=fallback,
                )
            raise UnknownIdError(kind="user", ids=[user_id])
        return UserRecommendation(
            user_id=user_id, items=item_scores(rec), model_version=recommender.model_version
        )

    @api.post("/recommend", response_model=BatchResponse)
    async def recommend_batch(self, body: BatchRequest) -> BatchResponse:
        """Top-k for a list of users in one matrix product; unknown users are listed."""
        self._check_k(body.k)
        if len(body.user_ids) > self.args.max_batch_users:
            raise HTTPException(
                status_code=413,
                detail=f"{len(body.user_ids)} users in one request; at most {self.args.max_batch_users} "
                "allowed",
            )
        recommender = self.recommender
        indices = recommender.user_indices(body.user_ids)
        known = [u for u, i in zip(body.user_ids, indices, strict=True) if i is not None]
        unknown = [u for u, i in zip(body.user_ids, indices, strict=True) if i is None]
        if unknown and body.fallback is None:
            raise UnknownIdError(kind="user", ids=unknown)
        recs = iter(recommender.recommend(known, body.k, exclude_seen=body.exclude_seen) if known else [])
        popular = recommender.popular(body.k) if unknown else None
        version = recommender.model_version
        results = []
        for user, index in zip(body.user_ids, indices, strict=True):
            if index is None:
                assert popular is not None
                results.append(
                    UserRecommendation(
                        user_id=user, items=item_scores(popular), model_version=version, fallback="popular"
                    )
                )
            else:
                results.append(
                    UserRecommendation(user_id=user, items=item_scores(next(recs)), model_version=version)
                )
        return BatchResponse(results=results, unknown_user_ids=unknown, model_version=version)

    @api.post("/recommend/new-user", response_model=NewUserResponse)
    async def recommend_new_user(self, body: NewUserRequest) -> NewUserResponse:
        """Fold-in: top-k for a user described by the items they interacted with."""
        self._check_k(body.k)
        recommender = self.recommender
        rec, unknown = recommender.recommend_new_user(body.item_ids, body.k, exclude_seen=body.exclude_seen)
        return NewUserResponse(
            items=item_scores(rec), unknown_item_ids=unknown, model_version=recommender.model_version
        )

    @api.get("/similar/{item_id}", response_model=SimilarResponse)
    async def similar(self, item_id: str, k: int = Query(20, description="list length")) -> SimilarResponse:
        """Items most similar to ``item_id``."""
        self._check_k(k)
        recommender = self.recommender
        rec = recommender.similar_items(item_id, k)
        return SimilarResponse(
            item_id=item_id, items=item_scores(rec), model_version=recommender.model_version
        )

    @api.get("/health", response_model=Health)
    async def health(self) -> Health:
        """Liveness, the version being served and the replica that answered."""
        return Health(status="ok", model_version=self.recommender.model_version, replica=self._replica)

    @api.get("/model", response_model=ModelInfo)
    async def model(self) -> ModelInfo:
        """The artifact being served: id, model name, training time, counts, metrics and parent artifact."""
        art = self.recommender.artifact
        parent = art.config.get("parent")
        return ModelInfo(
            artifact_id=art.artifact_id,
            model=art.model_name,
            trained_at=art.config.get("trained_at"),
            num_users=self.recommender.num_users,
            num_items=self.recommender.num_items,
            metrics=art.metrics,
            model_version=self.recommender.model_version,
            parent=ParentArtifact.model_validate(parent) if isinstance(parent, dict) else None,
        )

    @api.post(
        "/admin/reload",
        response_model=ModelInfo,
        dependencies=[Depends(_require_admin)],  # first: before the body is even read
        openapi_extra={"requestBody": _RELOAD_BODY},
    )
    async def reload(self, body: Annotated[ReloadRequest | None, Depends(_reload_request)]) -> ModelInfo:
        """Switch every replica to another artifact (or re-read the current one) without failing a request.

        This replica loads the artifact first (a broken one is a 422 and changes nothing), then publishes
        it; each replica loads it next to its old model, which keeps answering until one reference swap.
        Returns once every replica serves it (504 if some do not within ``reload_timeout_s``; they keep
        trying). Requires ``Authorization: Bearer <token>`` with the token given at start-up.
        """
        path = body.artifact if body and body.artifact else self._target[1]
        new = await asyncio.to_thread(self.args.load, path)  # InputError -> 422, nothing published
        self._preloaded = (path, new)
        generation, _ = await self._registry.publish.remote(path)
        served = await self._registry.wait_served.remote(
            generation, self._num_replicas, self.args.reload_timeout_s
        )
        if served < self._num_replicas:
            raise HTTPException(
                status_code=504,
                detail=f"{served} of {self._num_replicas} replicas serve {path} after "
                f"{self.args.reload_timeout_s} s; the others keep trying",
            )
        logger.info("reloaded %s (%s) on %d replicas", path, new.model_version, served)
        return await self.model()


def build_app(args: dict[str, Any] | ServeArgs) -> Application:
    """The application for ``serve.run`` (or ``serve run serving.app:build_app artifact=...``)."""
    parsed = args if isinstance(args, ServeArgs) else ServeArgs(**args)
    registry = DeploymentActorConfig(
        name=REGISTRY_NAME,
        actor_class=ArtifactRegistry,
        init_kwargs={"artifact": parsed.artifact},
        actor_options={"num_cpus": 0},
    )
    return RecommenderService.options(  # type: ignore[attr-defined]  # @serve.deployment makes it a Deployment
        num_replicas=parsed.num_replicas,
        max_ongoing_requests=parsed.max_ongoing_requests,
        ray_actor_options={"num_cpus": parsed.num_cpus},
        deployment_actors=[registry],
        # A stopping replica checks for unfinished requests every 0.1 s, not every 2 s: stopping or
        # redeploying takes about 1 s instead of 3, for the same draining.
        graceful_shutdown_wait_loop_s=0.1,
    ).bind(parsed)
