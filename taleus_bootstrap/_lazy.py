"""A module imported when one of its attributes is first read, for start-up time: the SQLite
store's synchronous uses (``invite``, ``tokens``, ``audit``) never import trio."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    """Stands for the module ``name`` until an attribute is read; then imports it and copies
    its attributes in, so that later reads are plain attribute reads (no slower than the
    module's own)."""

    def __init__(self, name: str) -> None:
        self._lazy_module_name = name

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._lazy_module_name)
        self.__dict__.update(vars(module))
        return getattr(module, attribute)
