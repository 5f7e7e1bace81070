"""recsys: graph contrastive recommendation from raw interaction logs to an HTTP endpoint.

Kept import-light on purpose: ``recsys --help`` and the ingest pipeline must not pay for torch or Ray.
"""

__version__ = "0.1.0"
