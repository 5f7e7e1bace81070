"""The package version: one home, read by ``pyproject.toml``, the API and what records it in its outputs."""

__version__ = "0.1.0"
