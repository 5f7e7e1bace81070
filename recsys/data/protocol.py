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
A split the model learned is never evaluated.

A **refit** (``honest`` only) retrains from scratch after selection, for the selection run's best step
count, on more of the data; the artifact's model is the refit one, so what it learned, what it masks when
served (``seen.npz``) and what is still held out change with it:

============  =========================  ===========================  ==================================
refit         the artifact learned       served with masked           held out
============  =========================  ===========================  ==================================
``none``      train                      train                        valid, test
``valid``     train ∪ valid              train ∪ valid                test (still reported honestly)
``all``       train ∪ valid ∪ test       train ∪ valid ∪ test         nothing: no held-out figures
============  =========================  ===========================  ==================================

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


class Refit(StrEnum):
    """What a run retrains on after selection (``recsys train --refit``); the second table above."""

    NONE = "none"
    VALID = "valid"
    ALL = "all"


REFIT_SPLITS: dict[Refit, tuple[str, ...]] = {
    Refit.VALID: ("train", "valid"),
    Refit.ALL: SPLIT_NAMES,
}


def parse_refit(name: Refit | str, protocol: Protocol | str = Protocol.HONEST) -> Refit:
    """The refit called ``name``, checked against ``protocol``.

    Raises:
        InputError: no refit has that name, or a refit under ``paper`` (it already trains on train ∪ valid
            and selects on test, so there is nothing held out to refit on).
    """
    try:
        refit = Refit(name)
    except ValueError:
        msg = f"unknown refit {name!r}; expected one of {', '.join(Refit)}"
        raise InputError(msg) from None
    rules = SPLITS[parse_protocol(protocol)]
    if refit is not Refit.NONE and protocol != Protocol.HONEST:
        msg = (
            f"refit {refit.value!r} needs the honest protocol: {protocol} already trains on "
            f"{' ∪ '.join(rules.train)} and selects on {rules.select}"
        )
        raise InputError(msg)
    return refit


def training_splits(
    protocol: Protocol | str = Protocol.HONEST, refit: Refit | str = Refit.NONE
) -> tuple[str, ...]:
    """The splits a model is trained on under ``protocol``; with ``refit``, those the refit model learns.

    The second form is what an artifact's model learned, and so what serving masks (``seen.npz``).
    """
    refit = parse_refit(refit, protocol)
    return SPLITS[parse_protocol(protocol)].train if refit is Refit.NONE else REFIT_SPLITS[refit]


def selection_split(protocol: Protocol | str = Protocol.HONEST) -> str:
    """The split the best epoch is selected on under ``protocol``: valid, or test under ``paper``.

    A refit changes nothing here: it comes after the selection and reuses its step count.
    """
    return SPLITS[parse_protocol(protocol)].select


def held_out_splits(
    protocol: Protocol | str = Protocol.HONEST, refit: Refit | str = Refit.NONE
) -> tuple[str, ...]:
    """The evaluable splits (valid, test) the model never learned; empty after ``refit="all"``."""
    trained = training_splits(protocol, refit)
    return tuple(name for name in SPLIT_NAMES[1:] if name not in trained)


def excluded_splits(
    split: str, protocol: Protocol | str = Protocol.HONEST, refit: Refit | str = Refit.NONE
) -> tuple[str, ...]:
    """The splits whose interactions are masked (never recommended) when ``split`` is evaluated.

    Raises:
        InputError: ``split`` is not valid or test, the protocol or refit is unknown, or the model learned
            ``split`` (the protocol or the refit trains on it).
    """
    trained = training_splits(protocol, refit)
    if split not in SPLIT_NAMES[1:]:
        msg = f"cannot evaluate split {split!r}; expected 'valid' or 'test'"
        raise InputError(msg)
    if split in trained:
        who = (
            f"the {Protocol(protocol)} protocol"
            if Refit(refit) is Refit.NONE
            else f"refit {Refit(refit).value!r}"
        )
        held = held_out_splits(protocol, refit)
        can = (
            f"it can only evaluate split {held[-1]!r}" if held else "no split is held out (no honest figures)"
        )
        msg = f"{who} trains on {' ∪ '.join(trained)}, so {can}"
        raise InputError(msg)
    return SPLIT_NAMES[: SPLIT_NAMES.index(split)]
