"""`vlmrl eval` shows a model the view it was trained on: the direct-mode system turn of a benchmark task's
prompt follows the recipe's prompt_style as training's prompts do (a "bare" model was trained with an empty
system turn; the eval used to give it "You answer questions about images.")."""

import pytest

from vlmrl.config import RolloutConfig
from vlmrl.data.prompts import direct_messages, question_text
from vlmrl.data.sample import Sample
from vlmrl.evaluation.harness import benchmark_messages


@pytest.mark.parametrize("style", ["full", "compact", "minimal", "bare"])
def test_direct_system_turn_matches_training(style):
    s = Sample(images=[None], question="Is the digit greater than 7?", answer="B", answer_type="choice",
               choices=["yes", "no"], meta={}, id="0")
    train = direct_messages(s, style=style)
    ev = benchmark_messages(s, RolloutConfig(mode="direct", prompt_style=style), "qwen2_5_vl")
    assert [m for m in ev if m["role"] == "system"] == [m for m in train if m["role"] == "system"]


def test_bare_view_is_training_view():
    """With prompt_style bare (no answer instruction) and a task prompt that is the question with its options,
    the eval messages are the training messages."""
    s = Sample(images=[None], question="Is the digit greater than 7?", answer="B", answer_type="choice",
               choices=["yes", "no"], meta={}, id="0")
    task_prompt = question_text(s.question, s.choices)  # what eval/digits.yaml's doc_to_text gives
    ev = benchmark_messages(Sample(images=[None], question=task_prompt, answer="B", answer_type="word",
                                   choices=None, meta={}, id="0"),
                            RolloutConfig(mode="direct", prompt_style="bare"), "qwen2_5_vl")
    assert ev == direct_messages(s, style="bare")
    assert ev[0] == {"role": "system", "content": ""}
