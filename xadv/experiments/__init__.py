"""Reproducible experiments that produce the results tables in the docs.

Each module has ``run(...) -> dict`` (rows plus a markdown table) and ``main(argv)`` so it
runs as ``python -m xadv.experiments.<name>`` and from the ``xadv`` command.
"""
