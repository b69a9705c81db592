"""Lazy exports: a package names its public API up front and imports each name's module on first use, so
`import vlmrl` (or a subpackage) stays cheap and a name is found where the README says it is."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, names: dict[str, str]):
    """`__getattr__` and `__dir__` for a package whose public `names` live in the modules given (name -> module)."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(names))

    return __getattr__, __dir__
