"""`import vlmrl` makes `transformers.AutoProcessor` return vlmrl's image-only processor for Qwen-VL checkpoints
(vlmrl/models/processor.py says why it is needed), without importing transformers itself (~5 s on a small CPU,
which `vlmrl --help`, `make-data` or `score` should not pay).

If transformers' AutoProcessor module is already loaded, the processors are registered at once; otherwise a finder
on `sys.meta_path` waits for that module and registers them right after it loads, before anyone can call
`AutoProcessor.from_pretrained`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TARGET = "transformers.models.auto.processing_auto"


def register() -> None:
    import vlmrl.models.processor  # noqa: F401  (registers on import)


class _RegisterAfterLoad(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for TARGET it asks the other finders and wraps the loader to register afterwards."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # one use; the other finders locate the real module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if TARGET in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterLoad) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterLoad())
