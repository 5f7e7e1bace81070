"""Ingest: raw interaction logs in, a clean, split, id-mapped dataset directory out (contract 1)."""

from pipelines.ingest import IngestConfig, IngestResult, ingest

__all__ = ["IngestConfig", "IngestResult", "ingest"]
