"""Loading user code that a recipe names (``module:Name`` or ``path/to/file.py:Name``), and name registries.

Reward functions (vlmrl/rewards/registry.py) and tools (vlmrl/rollout/tools/registry.py) are both named
this way: :func:`load_object` is the one loader, with errors that say which spec failed and why (missing
file, failing import, missing attribute, wrong kind of object); :class:`Registry` is the one name table.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable


def load_object(spec: str, what: str = "reward", noun: str = "function",
                check: Callable[[Any], bool] = callable, check_text: str = "not callable") -> Any:
    """The attribute ``Name`` of ``module`` or of the file ``path/to/file.py`` (run as a fresh module).

    ``what`` names the kind of spec in errors ("reward spec 'x.py:f': ..."), ``noun`` the attribute
    ("function", "class"); ``check(obj)`` must hold, else TypeError "... is a <type>, <check_text>"."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"{what} spec {spec!r} must look like 'module:{noun}' or 'path/to/file.py:{noun}'")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} spec {spec!r}: file not found: {path}")
        mod_name = f"vlmrl_user_{what}_{abs(hash(path))}"
        file_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[mod_name] = module
        try:
            file_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise ImportError(f"{what} spec {spec!r}: error while running {path}: {e!r}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise ImportError(f"{what} spec {spec!r}: cannot import module {target!r}: {e}") from e
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_") and check(getattr(module, n)))
        raise AttributeError(f"{what} spec {spec!r}: {target!r} has no {noun} {name!r} (candidates: {public})")
    obj = getattr(module, name)
    if not check(obj):
        raise TypeError(f"{what} spec {spec!r}: {name!r} is a {type(obj).__name__}, {check_text}")
    return obj


class Registry:
    """Names -> objects (reward functions, tool classes), and user objects by ``module:Name`` /
    ``path/to/file.py:Name`` spec. ``cache``: load each user spec once per process (else on every ``get``)."""

    def __init__(self, what: str, noun: str = "function", check: Callable[[Any], bool] = callable,
                 check_text: str = "not callable", cache: bool = False):
        self.what, self.noun, self.check, self.check_text, self.cache = what, noun, check, check_text, cache
        self.entries: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering an object under ``name``; ValueError if the name is taken by another one,
        TypeError if the object fails the registry's check."""
        def deco(obj: Any) -> Any:
            if not self.check(obj):
                raise TypeError(f"cannot register {self.what} {name!r}: {obj!r} is {self.check_text}")
            taken = self.entries.get(name, obj)
            if taken is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered ({taken.__module__}.{taken.__qualname__})")
            self.entries[name] = obj
            return obj
        return deco

    def names(self) -> list[str]:
        return sorted(self.entries)

    def load(self, spec: str) -> Any:
        """A user object by spec (vlmrl.loading.load_object)."""
        if self.cache and spec in self._loaded:
            return self._loaded[spec]
        obj = load_object(spec, self.what, self.noun, self.check, self.check_text)
        if self.cache:
            self._loaded[spec] = obj
        return obj

    def get(self, spec: str) -> Any:
        """A registered object by name, or a user object by 'module:Name' / 'path/to/file.py:Name'."""
        if spec in self.entries:
            return self.entries[spec]
        if ":" in spec:
            return self.load(spec)
        raise KeyError(f"unknown {self.what} {spec!r}; registered: {self.names()}, "
                       f"or give 'module:{self.noun}' / 'path/to/file.py:{self.noun}'")
