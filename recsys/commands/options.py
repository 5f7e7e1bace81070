"""What every subcommand's parser shares: the help formatter and comma-separated values."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the hand-made line breaks of the descriptions.

    An option whose help already says its default, or whose default is ``None`` (not given), gets no
    ``(default: ...)`` appended: "(default: env X) (default: None)" says nothing twice.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


def csv_names(text: str) -> tuple[str, ...]:
    """``a, b,,c`` -> ``("a", "b", "c")``: a comma-separated option value."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
