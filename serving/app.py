"""The Ray Serve application: a thin FastAPI wrapper over :class:`recsys.recommend.Recommender`.

All recommendation logic lives in the plain class; this module maps HTTP to it: validation and status
codes, ``@serve.batch`` to turn concurrent single-user requests into one matrix product, a health check,
and hot reload of the artifact behind a bearer token. Build it with :func:`build_app` (also the
``import_path`` target of a Serve config file: ``serving.app:build_app``).
"""

import asyncio
import logging
import secrets
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from recsys.errors import InputError
from recsys.recommend import Recommendation, Recommender, UnknownIdError
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    Health,
    ItemScore,
    ModelInfo,
    NewUserRequest,
    NewUserResponse,
    ReloadRequest,
    SimilarResponse,
    UserRecommendation,
)

logger = logging.getLogger(__name__)


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
    max_ongoing_requests: int = Field(128, ge=1, description="concurrent requests per replica")


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


def _items(rec: Recommendation) -> list[ItemScore]:
    return [ItemScore(item_id=i, score=s) for i, s in zip(rec.items, rec.scores, strict=True)]


@serve.deployment
@serve.ingress(api)
class RecommenderService:
    """One replica: a loaded :class:`Recommender` and the HTTP routes over it."""

    def __init__(self, args: ServeArgs) -> None:
        self.args = args
        self.recommender = Recommender.from_artifact(args.artifact)
        # @serve.batch adds these setters to the method; mypy sees only the undecorated signature.
        self._batched_recommend.set_max_batch_size(args.max_batch_size)  # type: ignore[attr-defined]
        self._batched_recommend.set_batch_wait_timeout_s(args.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._reload_lock = asyncio.Lock()
        logger.info("serving %s (%s)", args.artifact, self.recommender.model_version)

    def check_health(self) -> None:
        """Serve's replica health check: the model must be loaded."""
        if self.recommender.num_items < 1:
            msg = "no model loaded"
            raise RuntimeError(msg)

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.args.max_k:
            raise HTTPException(status_code=422, detail=f"k must be between 1 and {self.args.max_k}, got {k}")

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
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
        fallback: str | None = Query(
            None, pattern="^popular$", description="'popular': answer unknown users"
        ),
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
                    items=_items(popular),
                    model_version=recommender.model_version,
                    fallback=fallback,
                )
            raise UnknownIdError(kind="user", ids=[user_id])
        return UserRecommendation(user_id=user_id, items=_items(rec), model_version=recommender.model_version)

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
        if body.fallback not in (None, "popular"):
            raise HTTPException(
                status_code=422, detail=f"fallback must be 'popular' or absent, got {body.fallback!r}"
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
                        user_id=user, items=_items(popular), model_version=version, fallback="popular"
                    )
                )
            else:
                results.append(
                    UserRecommendation(user_id=user, items=_items(next(recs)), model_version=version)
                )
        return BatchResponse(results=results, unknown_user_ids=unknown, model_version=version)

    @api.post("/recommend/new-user", response_model=NewUserResponse)
    async def recommend_new_user(self, body: NewUserRequest) -> NewUserResponse:
        """Fold-in: top-k for a user described by the items they interacted with."""
        self._check_k(body.k)
        recommender = self.recommender
        rec, unknown = recommender.recommend_new_user(body.item_ids, body.k, exclude_seen=body.exclude_seen)
        return NewUserResponse(
            items=_items(rec), unknown_item_ids=unknown, model_version=recommender.model_version
        )

    @api.get("/similar/{item_id}", response_model=SimilarResponse)
    async def similar(self, item_id: str, k: int = Query(20, description="list length")) -> SimilarResponse:
        """Items most similar to ``item_id``."""
        self._check_k(k)
        recommender = self.recommender
        rec = recommender.similar_items(item_id, k)
        return SimilarResponse(item_id=item_id, items=_items(rec), model_version=recommender.model_version)

    @api.get("/health", response_model=Health)
    async def health(self) -> Health:
        """Liveness and the version being served."""
        return Health(status="ok", model_version=self.recommender.model_version)

    @api.get("/model", response_model=ModelInfo)
    async def model(self) -> ModelInfo:
        """The artifact being served: id, model name, training time, counts and metrics."""
        art = self.recommender.artifact
        return ModelInfo(
            artifact_id=art.artifact_id,
            model=art.model_name,
            trained_at=art.config.get("trained_at"),
            num_users=self.recommender.num_users,
            num_items=self.recommender.num_items,
            metrics=art.metrics,
            model_version=self.recommender.model_version,
        )

    @api.post("/admin/reload", response_model=ModelInfo)
    async def reload(
        self, body: ReloadRequest | None = None, authorization: str | None = Header(None)
    ) -> ModelInfo:
        """Load another artifact (or re-read the current one) and swap to it without failing a request.

        The new model is loaded next to the old one, which keeps answering until a single reference swap.
        Requires ``Authorization: Bearer <token>`` with the token given at start-up; without one, disabled.
        """
        if self.args.admin_token is None:
            raise HTTPException(
                status_code=403, detail="admin endpoints are disabled (start with --admin-token)"
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.args.admin_token):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")
        path = body.artifact if body and body.artifact else self.args.artifact
        async with self._reload_lock:
            new = await asyncio.to_thread(
                Recommender.from_artifact, path
            )  # InputError -> 422, old model kept
            self.recommender, self.args = new, self.args.model_copy(update={"artifact": path})
        logger.info("reloaded %s (%s)", path, new.model_version)
        return await self.model()


def build_app(args: dict[str, Any] | ServeArgs) -> Application:
    """The application for ``serve.run`` (or ``serve run serving.app:build_app artifact=...``)."""
    parsed = args if isinstance(args, ServeArgs) else ServeArgs(**args)
    return RecommenderService.options(  # type: ignore[attr-defined]  # @serve.deployment makes it a Deployment
        num_replicas=parsed.num_replicas, max_ongoing_requests=parsed.max_ongoing_requests
    ).bind(parsed)
