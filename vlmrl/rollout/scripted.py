"""A sampler that "generates" given texts: for scripted demonstrations (SFT warm start) and tests.

`ScriptedSampler(tokenizer, texts_fn)` implements `vlmrl.models.sampler.Sampler`: each call returns, for each row,
the tokens of `texts_fn(row_index, turn)`; a text containing `</tool_call>` stops there (as sampling with the stop
string would), any other text ends with `<|im_end|>`. Running it through the rollout engine
(`RolloutEngine(policy, cfg, sampler=ScriptedSampler(...))`) yields trajectories whose ids, masks and observation
turns are exactly what the real loop builds, so a model trained on them sees the real format.
"""

from __future__ import annotations

from typing import Callable

from vlmrl.models.sampler import Generation, Prompt, Sampler, SamplingParams


class ScriptedSampler(Sampler):
    def __init__(self, tokenizer, texts_fn: Callable[[int, int], str]):
        self.tokenizer = tokenizer
        self.texts_fn = texts_fn
        self.turn = 0
        self._rows: list[int] = []

    def start(self, n: int) -> None:
        """Call before each engine.rollout: n = number of trajectories (prompts x samples)."""
        self.turn, self._rows = 0, list(range(n))

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        rows = self._rows
        _, counts = params.per_prompt(len(prompts))
        if len(rows) != sum(counts):
            raise RuntimeError(f"scripted sampler expected {len(rows)} rows, the engine asked for "
                               f"{sum(counts)}: a scripted trajectory ended early")
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

    def sync_weights(self, model) -> None:
        """Scripted texts do not depend on weights."""
