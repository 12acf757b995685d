"""``python -m taleus_bootstrap``: the ``taleus-bootstrap`` command line."""

from .cli import main

main()
