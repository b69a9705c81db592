"""The sampling KV cache, and the handles that let a later turn of a rollout reuse it.

- `KVCache`: a transformers `Cache` whose layers keep keys/values in preallocated buffers and write each new
  token in place. (HF's `DynamicCache` concatenates the whole cache at every decoding step, which is the
  largest per-step cost of small models on CPU.) Rows can be repeated (G samples of a prompt), selected and
  compacted: `compact` copies, per kept row, the columns that hold its real tokens, right-aligned.
  `share_prefix(G)` is the cheaper way to give a prompt's cache to its G samples: the prompt's keys/values stay
  stored once per prompt (the layer's `prefix`) and each row gets a buffer of its own for the tokens it decodes;
  a decoding step then reads the prompt's cache once per group instead of G times
  (`vlmrl.models.decoding.attend_shared_prefix`). Column c of a row is prefix column c for c < P, then its
  own buffer, so masks, `compact` and KV refs see the same layout as after a repeat. A later tool turn keeps
  the prefix shared when the rows that go on are the same number per prompt (`compact(..., prefixes=...)`);
  otherwise compaction copies each row's prompt into its own columns.
- `KVState`: the cache one `HFSampler.generate` call ends with, plus which columns of each row hold real tokens.
- `KVRef`: one row of a `KVState` and the tokens (and PIL images) whose keys/values it holds. `HFSampler` keeps
  one per sampled row of its last call; a later call whose prompts each extend a ref's `ids` (and images)
  prefills only the new tokens. A state is used once: the call that continues from it takes its cache (a second
  use, or a prompt that matches no ref, falls back to a full prefill, which gives the same result, only
  slower). A ref is only valid for the weights that produced it (`HFSampler.sync_weights` drops them).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

_CACHE_ARG: dict[type, str] = {}


def cache_arg(module, cache) -> dict:
    """The keyword that hands `cache` to `module`'s forward: ``cache`` where the installed transformers has it
    (5.24 renamed ``past_key_values``, which then warns on every call), else ``past_key_values`` (older releases,
    e.g. the 5.19 of vLLM's environment, would silently drop an unknown ``cache`` into ``**kwargs``)."""
    cls = type(module)
    if cls not in _CACHE_ARG:
        try:
            params = inspect.signature(cls.forward).parameters
        except (TypeError, ValueError):
            params = {}
        _CACHE_ARG[cls] = "cache" if "cache" in params else "past_key_values"
    return {_CACHE_ARG[cls]: cache}


class BufferLayer(DynamicLayer):
    """One layer's keys/values in [B, H, capacity, D] buffers; `keys`/`values` are views of the filled part."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve = reserve  # spare columns to allocate beyond the first update (the decoding steps)
        self.kbuf = self.vbuf = None
        self.length = 0
        self.prefix = None  # (keys, values) [B, H, P, D] shared by each run of `group` rows, or None
        self.group = 1

    def _set(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Fresh buffers of `capacity` columns holding `keys`/`values` [B, H, L, D] at the start."""
        B, H, L, _ = keys.shape
        self.kbuf = keys.new_empty((B, H, capacity, keys.shape[-1]))
        self.vbuf = values.new_empty((B, H, capacity, values.shape[-1]))
        self.kbuf[:, :, :L] = keys
        self.vbuf[:, :, :L] = values
        self.length = L
        self._views()

    def _views(self) -> None:
        self.keys = self.kbuf[:, :, :self.length]
        self.values = self.vbuf[:, :, :self.length]

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Write new columns into the rows' own buffers; returns the own columns (the shared prefix excluded)."""
        n = key_states.shape[-2]
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
            self._set(key_states, value_states, n + self.reserve)
            return self.keys, self.values
        if self.length + n > self.kbuf.shape[2]:  # out of room: grow geometrically
            self._set(self.keys, self.values, max(2 * self.kbuf.shape[2], self.length + n + self.reserve))
        self.kbuf[:, :, self.length:self.length + n] = key_states
        self.vbuf[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """The transformers attention's call: all of each row's columns, the shared prefix included (gathered into
        a temporary per-row copy; the fused decoding step reads the prefix in place instead, via `append`)."""
        keys, values = self.append(key_states, value_states)
        if self.prefix is None:
            return keys, values
        pk, pv = (x.repeat_interleave(self.group, 0) for x in self.prefix)
        return torch.cat([pk, keys], dim=2), torch.cat([pv, values], dim=2)

    def get_seq_length(self) -> int:
        return (self.prefix_len + self.length) if self.is_initialized else 0

    @property
    def prefix_len(self) -> int:
        return self.prefix[0].shape[2] if self.prefix is not None else 0

    def share_prefix(self, group: int) -> None:
        """Hand the cached rows to `group` samples each without copying them: they become the shared prefix,
        and each of the B*group rows gets an empty buffer with the spare capacity the buffers had."""
        if self.prefix is not None:
            raise ValueError("the cache already has a shared prefix")
        spare = self.kbuf.shape[2] - self.length
        self.prefix = (self.keys.contiguous(), self.values.contiguous())
        self.group = group
        B, H, _, D = self.keys.shape
        self.kbuf = self.kbuf.new_empty((B * group, H, max(spare, 1), D))
        self.vbuf = self.vbuf.new_empty((B * group, H, max(spare, 1), self.vbuf.shape[-1]))
        self.length = 0
        self._views()

    def _columns(self, row: int, start: int, n: int):
        """Keys and values of `row`'s columns start..start+n (one piece, or two across the shared prefix)."""
        P = self.prefix_len
        out = []
        if start < P:
            pk, pv = self.prefix
            end = min(start + n, P)
            out.append((pk[row // self.group, :, start:end], pv[row // self.group, :, start:end]))
            n, start = n - (end - start), end
        if n > 0:
            out.append((self.keys[row, :, start - P:start - P + n], self.values[row, :, start - P:start - P + n]))
        return out

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized and tokens_to_remove:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.prefix is not None:
            raise ValueError("rows with a shared prefix cannot be repeated; compact them first")
        if self.is_initialized:
            self._set(self.keys.repeat_interleave(repeats, 0), self.values.repeat_interleave(repeats, 0),
                      self.kbuf.shape[2])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.prefix is not None:
            raise ValueError("rows with a shared prefix cannot be selected; compact them first")
        if self.is_initialized:
            self._set(self.keys[indices], self.values[indices], self.kbuf.shape[2])

    def compact(self, rows: list[int], runs: list[list[tuple[int, int]]], width: int, reserve: int,
                prefixes: list[int] | None = None) -> None:
        """Keep `rows`; kept row j holds old row `rows[j]`'s column runs `runs[j]` ((start, length) pairs, in
        order), right-aligned in `width` columns (the columns left of them are never attended). A shared prefix
        is copied into each kept row's own columns (the result has none), unless `prefixes` is given: then the
        prefix stays shared, reduced to those prompts (in order), whose rows `rows` are, the same number per
        prompt and prompt-major, and `runs`/`width` describe the rows' own columns only (runs start at or after
        the prefix's P columns)."""
        H = self.keys.shape[1]
        keys = self.kbuf.new_empty((len(rows), H, width + reserve, self.keys.shape[-1]))
        values = self.vbuf.new_empty((len(rows), H, width + reserve, self.values.shape[-1]))
        keys[:, :, :width] = 0  # masked slots must still be finite (0 * nan is nan in attention)
        values[:, :, :width] = 0
        for j, (r, row_runs) in enumerate(zip(rows, runs)):
            dst = width - sum(n for _, n in row_runs)
            for start, n in row_runs:
                for k, v in self._columns(r, start, n):
                    keys[j, :, dst:dst + k.shape[1]] = k
                    values[j, :, dst:dst + k.shape[1]] = v
                    dst += k.shape[1]
        self.kbuf, self.vbuf, self.length = keys, values, width
        if prefixes is None:
            self.prefix, self.group = None, 1
        else:
            if len(rows) % len(prefixes) or any(r // self.group != prefixes[j * len(prefixes) // len(rows)]
                                                for j, r in enumerate(rows)):
                raise ValueError("rows must be the same number per kept prompt, prompt-major")
            if prefixes != list(range(self.prefix[0].shape[0])):
                index = torch.tensor(prefixes, device=self.kbuf.device)
                self.prefix = tuple(x.index_select(0, index) for x in self.prefix)
            self.group = len(rows) // len(prefixes)
        self._views()

    def reset(self) -> None:
        self.kbuf = self.vbuf = None
        self.length = 0
        self.prefix, self.group = None, 1
        super().reset()


class KVCache(DynamicCache):
    """A cache of `BufferLayer`s (full attention only), with `reserve` spare columns per layer."""

    def __init__(self, num_layers: int, reserve: int = 0):
        Cache.__init__(self, layers=[BufferLayer(reserve) for _ in range(num_layers)])

    def compact(self, rows: list[int], runs: list[list[tuple[int, int]]], width: int, reserve: int = 0,
                prefixes: list[int] | None = None) -> None:
        for layer in self.layers:
            layer.compact(rows, runs, width, reserve, prefixes)

    def share_prefix(self, group: int) -> None:
        for layer in self.layers:
            layer.share_prefix(group)


@dataclass
class KVState:
    """A cache after a generate call; `valid[i, c]` says whether column c of row i holds one of its tokens."""

    cache: KVCache | None
    valid: torch.Tensor  # [n, W] bool

    def take(self) -> KVCache:
        """Hand the cache over to the call that continues from it (a state is used once)."""
        cache, self.cache = self.cache, None
        return cache


@dataclass
class KVRef:
    """Row `row` of `state` holds the keys/values of `ids` (whose images are `images`, in order); the token
    after them has rope position `next_pos`."""

    state: KVState = field(repr=False)
    row: int
    ids: list[int] = field(repr=False)
    images: list = field(default_factory=list, repr=False)
    next_pos: int = 0

    def matches(self, ids: list[int], images: list) -> bool:
        """Whether a sequence extends this row's tokens (same ids, the same image objects first)."""
        n = len(self.ids)
        return (self.state.cache is not None and len(ids) >= n and ids[:n] == self.ids
                and len(images) >= len(self.images) and all(a is b for a, b in zip(images, self.images)))


def compaction_runs(valid: torch.Tensor, keep: list[int]) -> tuple[list[list[tuple[int, int]]], torch.Tensor]:
    """For each row of `valid` [n, W] (bool), its first `keep[i]` real columns as (start, length) runs, and the
    mask [n, max(keep)] of the compacted layout (each row's kept columns right-aligned)."""
    n, width = valid.shape[0], max(keep) if keep else 0
    new_valid = torch.zeros((n, width), dtype=torch.bool, device=valid.device)
    runs = []
    for i, k in enumerate(keep):
        cols = torch.nonzero(valid[i]).flatten()[:k].tolist()
        if len(cols) < k:
            raise ValueError(f"row {i} holds {len(cols)} tokens, not {k}")
        row_runs: list[tuple[int, int]] = []
        for c in cols:
            if row_runs and row_runs[-1][0] + row_runs[-1][1] == c:
                row_runs[-1] = (row_runs[-1][0], row_runs[-1][1] + 1)
            else:
                row_runs.append((c, 1))
        runs.append(row_runs)
        new_valid[i, width - k:] = True
    return runs, new_valid
