"""An example user reward for `reward.parts` (recipes/composed.yaml): a penalty for long answers.

A per-sample reward fn: `fn(response, sample, **args) -> float | dict` (vlmrl/rewards/registry.py documents
`sample`); the recipe's `args` arrive as keyword arguments. The dict's other entries are logged beside the
reward (`reward/words/mean`).
"""


def length_penalty(response: str, sample: dict, max_words: int = 32) -> dict:
    """0 up to `max_words` words over all assistant turns, then falling linearly to -1 at twice as many."""
    if max_words < 1:
        raise ValueError(f"length_penalty: max_words must be >= 1, got {max_words}")
    words = sum(len(turn.split()) for turn in sample.get("turns") or [response])
    over = max(0, words - max_words) / max_words
    return {"reward": -min(1.0, over), "words": float(words)}
