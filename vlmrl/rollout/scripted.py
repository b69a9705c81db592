"""A policy that "generates" given texts: for scripted demonstrations (SFT warm start) and tests.

`ScriptedPolicy(policy, texts_fn)` behaves like `policy` except that `generate` returns, for each row,
the tokens of `texts_fn(row_index, turn)`; a text containing `</tool_call>` stops there (as sampling
with the stop string would), any other text ends with `<|im_end|>`. Running it through the rollout
engine yields trajectories whose ids, masks and observation turns are exactly what the real loop
builds, so a model trained on them sees the real format.
"""

from __future__ import annotations

from typing import Callable

from vlmrl.models.policy import Generation, Policy


class ScriptedPolicy(Policy):
    def __init__(self, base: Policy, texts_fn: Callable[[int, int], str]):
        super().__init__(base.model, base.processor, base.family)
        self.texts_fn = texts_fn
        self.turn = 0
        self._rows: list[int] = []

    def start(self, n: int) -> None:
        """Call before each engine.rollout: n = number of trajectories (prompts x samples)."""
        self.turn, self._rows = 0, list(range(n))

    def generate(self, prompts, max_new_tokens=64, temperature=1.0, top_p=1.0, stop_strings=(), num_samples=1,
                 generator=None):
        rows = self._rows
        if len(rows) != len(prompts) * num_samples:
            raise RuntimeError(f"scripted policy expected {len(rows)} rows, the engine asked for "
                               f"{len(prompts) * num_samples}: a scripted trajectory ended early")
        out = []
        for row in rows:
            text = self.texts_fn(row, self.turn)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if "</tool_call>" not in text:
                ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
            out.append(Generation(ids, [0.0] * len(ids), "stop"))
        # rows that continue are those whose text was a tool call (the engine keeps their order)
        self._rows = [row for row, g in zip(rows, out) if "</tool_call>" in self.tokenizer.decode(g.ids)]
        self.turn += 1
        return out


class PrefixedPolicy(Policy):
    """`policy` whose first assistant turn is forced to begin with `prefix` (a fixed decision for
    baselines, e.g. "always crop": the model's own call-opening phrase then `<tool_call>`; "never crop":
    its answer-opening phrase). The model writes the rest; the forced tokens are part of the turn's ids
    (log-prob 0.0) so the turn's text, and the tool call in it, is what the engine parses. A prefix that
    already holds a stop string (e.g. a whole `<tool_call>...</tool_call>`) is the entire first turn.
    Call `start()` before each engine.rollout: the first `generate` after it is the first turn."""

    def __init__(self, base: Policy, prefix: str):
        super().__init__(base.model, base.processor, base.family)
        self.prefix = prefix
        self.prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=False)
        if not self.prefix_ids:
            raise ValueError("PrefixedPolicy needs a non-empty prefix")
        self.first = True

    def start(self, n: int = 0) -> None:
        self.first = True

    def generate(self, prompts, max_new_tokens=64, temperature=1.0, top_p=1.0, stop_strings=(), num_samples=1,
                 generator=None, **kwargs):
        if not self.first:
            return super().generate(prompts, max_new_tokens, temperature, top_p, stop_strings, num_samples,
                                    generator, **kwargs)
        self.first = False
        k = len(self.prefix_ids)
        for stop in stop_strings:
            if stop in self.prefix:  # the prefix is the whole turn, cut after the stop string
                ids = self.tokenizer.encode(self.prefix[:self.prefix.index(stop) + len(stop)], add_special_tokens=False)
                return [Generation(list(ids), [0.0] * len(ids), "stop") for _ in range(len(prompts) * num_samples)]
        caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        seqs = [type(p)(list(p.ids) + self.prefix_ids, p.images) for p in prompts]
        gens = super().generate(seqs, [max(1, c - k) for c in caps], temperature, top_p, stop_strings, num_samples,
                                generator, **kwargs)
        # the cache covers prompt + prefix + sampled ids, i.e. exactly the turn's ids: later turns reuse it
        return [Generation(self.prefix_ids + g.ids, [0.0] * k + g.logprobs, g.finish, kv=g.kv) for g in gens]
