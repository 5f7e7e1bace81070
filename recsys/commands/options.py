"""What every subcommand's parser shares: the help formatter and comma-separated values."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the hand-made line breaks of the descriptions."""


def csv_names(text: str) -> tuple[str, ...]:
    """``a, b,,c`` -> ``("a", "b", "c")``: a comma-separated option value."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
