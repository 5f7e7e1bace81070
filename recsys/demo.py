"""The Quick start's main job on the bundled sample: every stage that exists, end to end.

Each stage calls the same library function as its own subcommand, so the demo shows exactly what a user
would run by hand (the equivalent commands are logged as it goes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec

logger = logging.getLogger(__name__)

SAMPLE_LOG = Path("data/sample/interactions.csv")


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo reads the sample log and writes its outputs."""

    log: Path = SAMPLE_LOG
    workdir: Path = Path("out/demo")


def run_demo(cfg: DemoConfig) -> dict[str, Path]:
    """Ingest the sample log (k-core 3, temporal split) and return the paths written, by stage."""
    dataset = cfg.workdir / "dataset"
    logger.info(
        "[1/1] ingest: recsys ingest --format csv --input %s --time-col timestamp --rating-col rating "
        "--min-user-interactions 3 --min-item-interactions 3 --split temporal --out %s --force",
        cfg.log,
        dataset,
    )
    result = ingest(
        IngestConfig(
            out=dataset,
            spec=LogSpec("csv", time_col="timestamp", rating_col="rating"),
            input=cfg.log,
            split="temporal",
            min_user_interactions=3,
            min_item_interactions=3,
            force=True,
        )
    )
    counts = result.meta["counts"]
    print(
        f"ingest  -> {dataset}: {result.meta['num_users']:,} users, {result.meta['num_items']:,} items, "
        f"train/valid/test {counts['train']['interactions']:,}/{counts['valid']['interactions']:,}/"
        f"{counts['test']['interactions']:,}"
    )
    return {"dataset": dataset}
