"""Request and response models of the HTTP API (pydantic): the contract clients code against."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

RawId = str | int
Fallback = Literal["popular"]
"""What answers an unknown user: ``popular`` (the most interacted-with items); without one, a 404."""


class ItemScore(BaseModel):
    """One recommended item: its raw id and its score (higher is better)."""

    item_id: RawId
    score: float


class UserRecommendation(BaseModel):
    """Top-k for one user. ``fallback`` is ``"popular"`` when the user was unknown and asked for it."""

    user_id: RawId
    items: list[ItemScore]
    model_version: str
    fallback: Fallback | None = None


class BatchRequest(BaseModel):
    """Several users at once (one matrix product for all of them)."""

    user_ids: list[RawId] = Field(min_length=1, description="raw user ids")
    k: int = Field(20, description="list length per user")
    exclude_seen: bool = Field(True, description="drop each user's training items")
    fallback: Fallback | None = Field(None, description="'popular' answers unknown users with popular items")


class BatchResponse(BaseModel):
    """Results in request order; unknown users are listed (and answered only with ``fallback``)."""

    results: list[UserRecommendation]
    unknown_user_ids: list[RawId]
    model_version: str


class NewUserRequest(BaseModel):
    """A user the model has not seen, described by the raw ids of items they interacted with."""

    item_ids: list[RawId] = Field(min_length=1, description="raw item ids the user interacted with")
    k: int = Field(20, description="list length")
    exclude_seen: bool = Field(True, description="drop the given items from the list")


class NewUserResponse(BaseModel):
    """Fold-in recommendations; ``unknown_item_ids`` were ignored (and are reported, not dropped silently)."""

    items: list[ItemScore]
    unknown_item_ids: list[RawId]
    model_version: str


class SimilarResponse(BaseModel):
    """Items most similar to ``item_id`` (cosine of item embeddings)."""

    item_id: RawId
    items: list[ItemScore]
    model_version: str


class ParentArtifact(BaseModel):
    """The artifact a warm-started model was trained from (``recsys train --init-from``): its lineage."""

    artifact_id: str
    path: str | None = None
    trained_at: str | None = None
    dataset_sha256: str | None = Field(None, description="SHA-256 of the meta.json of its dataset")


class ModelInfo(BaseModel):
    """What is being served; ``parent`` is set for a warm-started model (``None``: trained from scratch)."""

    artifact_id: str
    model: str
    trained_at: str | None
    num_users: int
    num_items: int
    metrics: dict[str, Any]
    model_version: str
    parent: ParentArtifact | None = None


class ReloadRequest(BaseModel):
    """Swap to another artifact directory (or re-read the current one when omitted)."""

    artifact: str | None = None


class Health(BaseModel):
    """Liveness, the version being served and the replica that answered (replicas may differ mid-reload)."""

    status: str
    model_version: str
    replica: str
