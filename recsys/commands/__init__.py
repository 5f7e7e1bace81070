"""The ``recsys`` subcommands, one module per group: each adds its parsers and holds their handlers.

:mod:`recsys.cli` assembles them. Each module imports only argparse and light config modules at the top;
what a command runs (torch, polars, Ray) is imported inside its handler, so ``recsys --help`` starts fast.
"""
