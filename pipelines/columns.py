"""Column names shared by every ingest step, so no step spells them twice.

Raw log ids are ``user_id``/``item_id``; contiguous ``0..n-1`` indices are ``user_idx``/``item_idx``.
``line`` is the 1-based position of a row in its input file, kept only so errors can point at it.
"""

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
LINE = "line"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
RAW_ID = "raw_id"

FORMATS = ("csv", "tsv", "parquet", "jsonl", "lightgcn")
