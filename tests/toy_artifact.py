"""Artifacts for tests: the known-answer toy, and random embeddings over a real dataset directory.

The toy (recommender and serving tests): 3 users (ann, bob, cy), 4 items (10, 20, 30, 40), 2-d embeddings
chosen by hand; ann has seen 10 and 20, bob 20, cy 10, 20 and 30. ``item_scale`` multiplies the item
embeddings (a second model version).
"""

import polars as pl
import torch

from recsys.artifact import write_artifact, write_embeddings_artifact
from recsys.data.dataset import Dataset, load_dataset

USERS = ["ann", "bob", "cy"]
ITEMS = [10, 20, 30, 40]


def make_artifact(root, name, item_scale=1.0):
    ds = root / f"{name}-ds"
    ds.mkdir()
    pl.DataFrame({"user_idx": [0, 1, 2], "raw_id": USERS}).write_parquet(ds / "users.parquet")
    pl.DataFrame({"item_idx": [0, 1, 2, 3], "raw_id": ITEMS}).write_parquet(ds / "items.parquet")
    (ds / "meta.json").write_text("{}")
    train = torch.tensor([[0, 0, 1, 2, 2, 2], [0, 1, 1, 0, 1, 2]])
    data = Dataset(3, 4, train, train[:, :0], train[:, :0], path=ds)
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    item = torch.tensor([[3.0, 0.0], [2.0, 1.0], [0.0, 2.0], [1.0, 1.0]]) * item_scale
    return write_artifact(
        root / name,
        dataset=data,
        config={"model": "mf"},
        state_dict={"embedding": torch.cat([user, item])},
        user_emb=user,
        item_emb=item,
        train_pairs=train,
        metrics={"test": {"recall@20": 0.5}},
        history=[{"epoch": 1, "loss": 0.5}],
    )


def random_artifact(dataset_dir, out, *, dim=4, seed=0):
    """A complete artifact, as `recsys train` writes it, with random embeddings for a dataset directory."""
    ds = load_dataset(dataset_dir)
    g = torch.Generator().manual_seed(seed)
    user, item = torch.randn(ds.num_users, dim, generator=g), torch.randn(ds.num_items, dim, generator=g)
    history = [
        {"epoch": e, "loss": 0.7 - 0.1 * e, "valid": {"recall@20": 0.1 * e, "ndcg@20": 0.05 * e}}
        for e in (1, 2, 3)
    ]
    config = {"model": "mf", "protocol": "honest"}
    write_embeddings_artifact(out, ds, user, item, config=config, history=history)
    return ds, user, item
