"""``recsys ingest`` and ``recsys generate``: the commands that write data (a dataset, a synthetic log)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.commands.options import HelpFormatter, csv_names


def add_ingest(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys ingest``: raw log -> dataset directory."""
    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="raw interaction log -> clean, split, id-mapped dataset directory",
        formatter_class=HelpFormatter,
        description=(
            "Read a raw interaction log, clean it (drop null ids, rating threshold, dedupe keeping the\n"
            "earliest event, k-core), map raw ids to contiguous indices, split train/valid/test and write a\n"
            "dataset directory: train/valid/test.parquet, users/items.parquet and meta.json.\n\n"
            "examples:\n"
            "  recsys ingest --format csv --input data/sample/interactions.csv --time-col timestamp \\\n"
            "      --split temporal --out out/sample\n"
            "  recsys ingest --format lightgcn --train gowalla/train.txt --test gowalla/test.txt \\\n"
            "      --split preset --out out/gowalla\n"
            "  recsys ingest --format csv --separator :: --no-header --names user,item,rating,time \\\n"
            "      --user-col user --item-col item --rating-col rating --time-col time \\\n"
            "      --min-rating 4 --input ml-1m/ratings.dat --out out/ml1m"
        ),
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "--format",
        required=True,
        choices=["csv", "tsv", "parquet", "jsonl", "lightgcn"],
        help="format of the input file(s); lightgcn is 'user item item ...' per line",
    )
    src.add_argument("--input", type=Path, help="the log file (random, temporal and cutoff splits)")
    src.add_argument("--train", type=Path, help="training file of an existing split (--split preset)")
    src.add_argument("--test", type=Path, help="test file of an existing split (--split preset)")
    src.add_argument("--user-col", default="user_id", help="column with the raw user id")
    src.add_argument("--item-col", default="item_id", help="column with the raw item id")
    src.add_argument("--time-col", help="column with the event time (epoch numbers or date-times)")
    src.add_argument("--rating-col", help="column with a numeric rating")
    src.add_argument(
        "--separator",
        help="csv/tsv field separator, several characters allowed (default ',' for csv, tab for tsv)",
    )
    src.add_argument("--no-header", action="store_true", help="the csv/tsv has no header line")
    src.add_argument(
        "--names",
        type=csv_names,
        help="comma-separated column names of a header-less csv/tsv (default column_1, column_2, ...)",
    )
    clean = p.add_argument_group("cleaning (threshold and k-core are off unless given)")
    clean.add_argument("--min-rating", type=float, help="keep rows with rating >= this value")
    clean.add_argument(
        "--min-user-interactions", type=int, default=1, help="k-core: minimum interactions per user"
    )
    clean.add_argument(
        "--min-item-interactions", type=int, default=1, help="k-core: minimum interactions per item"
    )
    split = p.add_argument_group("split")
    split.add_argument(
        "--split",
        default="random",
        choices=["random", "temporal", "cutoff", "preset"],
        help="random: per-user random shares; temporal: per-user last events; cutoff: global "
        "time cutoffs; preset: keep --train/--test, carve valid out of train",
    )
    split.add_argument(
        "--valid-ratio",
        type=float,
        default=0.1,
        help="share per user for valid (random, preset, cutoff quantile)",
    )
    split.add_argument(
        "--test-ratio", type=float, default=0.2, help="share per user for test (random, cutoff quantile)"
    )
    split.add_argument("--valid-n", type=int, default=1, help="events per user for valid (temporal)")
    split.add_argument("--test-n", type=int, default=1, help="events per user for test (temporal)")
    split.add_argument("--valid-cutoff", help="time from which events are valid (cutoff); default: quantile")
    split.add_argument("--test-cutoff", help="time from which events are test (cutoff); default: quantile")
    split.add_argument("--seed", type=int, default=0, help="seed of the random and preset splits")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    out.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from pipelines.ingest import IngestConfig, ingest
    from pipelines.readers import LogSpec, parse_time

    spec = LogSpec(
        format=args.format,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        separator=args.separator,
        has_header=not args.no_header,
        names=args.names,
    )
    cfg = IngestConfig(
        out=args.out,
        spec=spec,
        input=args.input,
        train=args.train,
        test=args.test,
        split=args.split,
        valid_ratio=args.valid_ratio,
        test_ratio=args.test_ratio,
        valid_n=args.valid_n,
        test_n=args.test_n,
        valid_cutoff=parse_time(args.valid_cutoff, "--valid-cutoff"),
        test_cutoff=parse_time(args.test_cutoff, "--test-cutoff"),
        min_rating=args.min_rating,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
        seed=args.seed,
        force=args.force,
    )
    result = ingest(cfg)
    counts = result.meta["counts"]
    print(
        f"dataset {result.out}: {result.meta['num_users']:,} users, {result.meta['num_items']:,} items, "
        f"train {counts['train']['interactions']:,} / valid {counts['valid']['interactions']:,} / "
        f"test {counts['test']['interactions']:,} interactions"
    )
    return 0


def add_generate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``recsys generate``: a synthetic log."""
    p = sub.add_parser(
        "generate",
        parents=[common],
        help="write a synthetic interaction log (string ids, power-law popularity, topics, dirty rows)",
        formatter_class=HelpFormatter,
        description=(
            "Write a synthetic log with columns user_id, item_id, timestamp (epoch s), rating (1-5).\n"
            "Users prefer latent topics and items follow a power law, so a good recommender beats\n"
            "most-popular; a few null ids and repeated events are mixed in for the cleaning steps.\n"
            "Each user is active for half a year within one year of timestamps, so a temporal split\n"
            "(--split temporal or cutoff) tests on later events. --density sets the share of distinct\n"
            "user-item pairs instead of --interactions; --drift makes item popularity change over the\n"
            "year, so later events favour items that were less popular early.\n\n"
            "examples:\n"
            "  recsys generate --users 1000000 --items 1000000 --interactions 50000000 --out big.csv\n"
            "  recsys generate --users 2000 --items 1500 --density 0.08 --drift 1 --out dense.csv"
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument(
        "--format", default="csv", choices=["csv", "tsv", "parquet", "jsonl"], help="output format"
    )
    p.add_argument("--users", type=int, default=1000, help="number of users")
    p.add_argument("--items", type=int, default=800, help="number of items")
    p.add_argument("--interactions", type=int, default=30_000, help="approximate number of clean events")
    p.add_argument(
        "--density",
        type=float,
        help="target share of distinct user-item pairs among users x items, in (0, 1), e.g. 0.05; the "
        "number of events is calibrated to reach it (users repeat items, as real logs do) and "
        "--interactions is ignored (default: off)",
    )
    p.add_argument(
        "--drift",
        type=float,
        default=0.0,
        help="item popularity drift over the year, in [0, 1]: each item's log-popularity moves linearly "
        "from an early to an independent late Zipf ranking, this share of the way by the year's end "
        "(0: one ranking all year)",
    )
    p.add_argument("--topics", type=int, default=0, help="latent topics (0: about sqrt(items)/2)")
    p.add_argument("--popularity-exponent", type=float, default=1.0, help="Zipf exponent of item popularity")
    p.add_argument("--dirty-fraction", type=float, default=0.002, help="share of extra null/repeated rows")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from pipelines.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        num_users=args.users,
        num_items=args.items,
        num_interactions=args.interactions,
        num_topics=args.topics,
        popularity_exponent=args.popularity_exponent,
        dirty_fraction=args.dirty_fraction,
        seed=args.seed,
        density=args.density,
        drift=args.drift,
    )
    rows = generate(cfg, args.out, args.format, progress=not args.quiet)
    print(f"wrote {rows:,} rows to {args.out}")
    return 0
