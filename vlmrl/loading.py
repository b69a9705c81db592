"""Loading user code that a recipe names: ``module:Name`` or ``path/to/file.py:Name``.

Reward functions (vlmrl/rewards/registry.py) and tools (vlmrl/rollout/tools/registry.py) are both named
this way; :func:`load_object` is the one loader, with errors that say which spec failed and why (missing
file, failing import, missing attribute, wrong kind of object).
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
