"""``python -m leaninfer ...``: the ``leaninfer`` executable."""

from .entry import main

main()
