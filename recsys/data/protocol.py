"""Protocols: the one place that says which splits train, select and test under each protocol.

============  =================  ===================  =======================================
protocol      trains on          selects on           reports
============  =================  ===================  =======================================
``honest``    train              valid                test, once, with the selected weights
``paper``     train ∪ valid      test                 the best test epoch (SELFRec's protocol)
============  =================  ===================  =======================================

``paper`` is how the SimGCL/XSimGCL authors report: optimistic, and only for comparing with published
numbers. Whichever split is evaluated, the interactions of the splits before it (train, then valid, then
test) are masked: they are known to the system, so recommending them again would count as a hit for free.
A split the protocol trains on is never evaluated.

Kept free of torch: :mod:`recsys.config` validates protocol names with it when the CLI starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from recsys.errors import InputError

SPLIT_NAMES = ("train", "valid", "test")  # in time order: the masking rule above reads it
TEST_SPLIT = "test"


class Protocol(StrEnum):
    """A protocol's name, as configs, artifacts and reports write it."""

    HONEST = "honest"
    PAPER = "paper"


@dataclass(frozen=True)
class ProtocolSplits:
    """Which splits a protocol trains and selects on (test is always reported on ``test``).

    Args:
        train: The splits the model learns from (also the baselines' and the popularity statistics' data).
        select: The split the best epoch (and a baseline's hyperparameters) is chosen on.
    """

    train: tuple[str, ...]
    select: str


SPLITS: dict[Protocol, ProtocolSplits] = {
    Protocol.HONEST: ProtocolSplits(train=("train",), select="valid"),
    Protocol.PAPER: ProtocolSplits(train=("train", "valid"), select=TEST_SPLIT),
}


def parse_protocol(name: Protocol | str) -> Protocol:
    """The protocol called ``name``.

    Raises:
        InputError: no protocol has that name.
    """
    try:
        return Protocol(name)
    except ValueError:
        msg = f"unknown protocol {name!r}; expected one of {', '.join(Protocol)}"
        raise InputError(msg) from None


def training_splits(protocol: Protocol | str = Protocol.HONEST) -> tuple[str, ...]:
    """The splits a model is trained on under ``protocol``."""
    return SPLITS[parse_protocol(protocol)].train


def selection_split(protocol: Protocol | str = Protocol.HONEST) -> str:
    """The split the best epoch is selected on under ``protocol``: valid, or test under ``paper``."""
    return SPLITS[parse_protocol(protocol)].select


def excluded_splits(split: str, protocol: Protocol | str = Protocol.HONEST) -> tuple[str, ...]:
    """The splits whose interactions are masked (never recommended) when ``split`` is evaluated.

    Raises:
        InputError: ``split`` is not valid or test, the protocol is unknown, or it trains on ``split``.
    """
    trained = training_splits(protocol)
    if split not in SPLIT_NAMES[1:]:
        msg = f"cannot evaluate split {split!r}; expected 'valid' or 'test'"
        raise InputError(msg)
    if split in trained:
        msg = (
            f"the {Protocol(protocol)} protocol trains on {' ∪ '.join(trained)}, "
            f"so it can only evaluate split {TEST_SPLIT!r}"
        )
        raise InputError(msg)
    return SPLIT_NAMES[: SPLIT_NAMES.index(split)]
