"""Shared fixtures: tiny offline models built once per test session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> directory of a tiny checkpoint (seed 0), built on first use."""
    from vlmrl.models.tiny import make_tiny

    built = {}

    class Dirs(dict):
        def __missing__(self, family):
            path = make_tiny(family, tmp_path_factory.mktemp(f"tiny_{family}"), size="tiny", seed=0)
            self[family] = path
            return path

    return Dirs(built)


@pytest.fixture(scope="session")
def tiny_policies(tiny_dirs):
    """family -> loaded Policy (float32, CPU)."""
    from vlmrl.models.policy import Policy

    class Pols(dict):
        def __missing__(self, family):
            pol = Policy.load(tiny_dirs[family], dtype="float32", device="cpu")
            self[family] = pol
            return pol

    return Pols()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models
    run far faster on one CPU thread, with no oversubscription on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
