"""recsys: graph contrastive recommendation from raw interaction logs to an HTTP endpoint.

Kept import-light on purpose: ``recsys --help`` and the ingest pipeline must not pay for torch or Ray.
"""

from recsys._version import __version__

__all__ = ["__version__"]
