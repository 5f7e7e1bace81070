import pytest
import torch

from recsys.data.dataset import Dataset
from recsys.data.protocol import Protocol, excluded_splits, parse_protocol, selection_split, training_splits
from recsys.errors import InputError


def test_each_protocol_trains_selects_and_masks_as_its_table_says():
    rules = {p: (training_splits(p), selection_split(p), excluded_splits("test", p)) for p in Protocol}
    assert rules == {
        "honest": (("train",), "valid", ("train", "valid")),
        "paper": (("train", "valid"), "test", ("train", "valid")),
    }
    # selecting masks exactly the training data, under both protocols
    assert all(excluded_splits(selection_split(p), p) == training_splits(p) for p in Protocol)
    with pytest.raises(InputError, match="unknown protocol 'optimistic'; expected one of honest, paper"):
        parse_protocol("optimistic")
    with pytest.raises(InputError, match="trains on train ∪ valid"):
        excluded_splits("valid", "paper")


def test_dataset_pairs_joins_splits_in_the_order_given():
    split = {name: torch.tensor([[i], [i]]) for i, name in enumerate(("train", "valid", "test"))}
    data = Dataset(3, 3, **split)
    assert data.pairs(training_splits("paper")).tolist() == [[0, 1], [0, 1]]
    assert torch.equal(data.pairs(["test"]), split["test"])


def test_a_refit_learns_masks_and_holds_out_as_its_table_says():
    from recsys.data.protocol import Refit, held_out_splits, parse_refit

    rules = {r: (training_splits("honest", r), held_out_splits("honest", r)) for r in Refit}
    assert rules == {
        "none": (("train",), ("valid", "test")),
        "valid": (("train", "valid"), ("test",)),
        "all": (("train", "valid", "test"), ()),
    }
    # Test is evaluated with every learned split masked, which is the refit's training data itself.
    assert excluded_splits("test", "honest", "valid") == training_splits("honest", "valid")
    assert selection_split("honest") == "valid"  # the refit reuses the selection, made before it
    with pytest.raises(
        InputError, match="refit 'valid' trains on train ∪ valid, so it can only evaluate split 'test'"
    ):
        excluded_splits("valid", "honest", "valid")
    with pytest.raises(InputError, match="no split is held out"):
        excluded_splits("test", "honest", "all")
    with pytest.raises(InputError, match="refit 'all' needs the honest protocol: paper already trains on"):
        parse_refit("all", "paper")
    with pytest.raises(InputError, match="unknown refit 'yes'"):
        training_splits("honest", "yes")
