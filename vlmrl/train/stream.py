"""The training prompt order: a seeded permutation per epoch, sharded across processes, resumable."""

from __future__ import annotations

import sys

import torch


class PromptStream:
    """Deterministic, resumable prompt order: a seeded permutation per epoch, sharded across processes.
    Rows whose images fail to decode are skipped and counted (never a crash mid-training)."""

    def __init__(self, dataset, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError(f"the training dataset is empty: {dataset!r}")
        self.dataset, self.seed, self.rank, self.world, self.shuffle = dataset, seed, rank, world, shuffle
        self.position = 0  # prompts consumed by this process
        self.skipped: list[str] = []

    def _index(self, k: int) -> int:
        g = k * self.world + self.rank
        n = len(self.dataset)
        epoch, off = divmod(g, n)
        if not self.shuffle:
            return off
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        return int(perm[off])

    def next(self, count: int) -> list:
        out = []
        tries = 0
        while len(out) < count:
            i = self._index(self.position)
            self.position += 1
            try:
                out.append(self.dataset[i])
            except (ValueError, OSError) as e:  # DataError is a ValueError: bad image or row
                self.skipped.append(str(e))
                print(f"skipped a training row: {e}", file=sys.stderr)
                tries += 1
                if tries > 10 * count + len(self.dataset):
                    raise ValueError(f"no usable rows: the last error was: {e}") from None
        return out
