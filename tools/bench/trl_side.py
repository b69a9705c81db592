"""TRL's GRPOTrainer as one case of the step benchmark (tools/bench/step.py).

Same work as the `vlmrl_grpo` case: the same checkpoint and processor (vlmrl's image-only Qwen-VL processor,
passed as `processing_class`, so TRL takes its vision-language path), the same prompt with its image, B prompts
x G completions per step, exactly N completion tokens per row (`min_new_tokens=N` keeps EOS from being sampled
before the cap), token-mean loss (`loss_type="dapo"`), clip 0.2, no reference model (`beta=0`), no vLLM, no
gradient checkpointing, fp32 on CPU, one optimizer step per step (AdamW, constant learning rate).

TRL owns its training loop, so `trainer.train()` runs in a thread and a callback holds it at the start of every
step until `TrlCase.step()` lets it go; the step's time runs from `on_step_begin` to `on_step_end` (generation,
rewards, forward, backward, optimizer step). The torch thread count is read inside that thread at every step
(`torch_threads_in_trl_thread`), and with `count_flops` the first step runs under torch's FLOP counter, entered
in that thread (dispatch modes are per thread). `keep_freed_memory` sets glibc's allocator as vlmrl's trainer
does (vlmrl/train/memory.py), so both sides run with the same allocator settings.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

import torch


def trl_messages(messages: list[dict]) -> list[dict]:
    """vlmrl's chat messages with every content as a list of parts (a datasets column cannot mix a plain
    string with a list); the chat template renders both forms to the same text."""
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]
             if isinstance(m["content"], str) else m["content"]} for m in messages]


class TrlCase:
    """GRPOTrainer on `sample` repeated, `total_steps` steps, one `step()` at a time."""

    def __init__(self, model_dir: str | Path, sample, messages: list[dict], *, prompts: int, group_size: int,
                 new_tokens: int, lr: float, total_steps: int, seed: int, output_dir: str | Path,
                 keep_freed_memory: bool = True, count_flops: bool = False):
        import trl
        from datasets import Dataset
        from transformers import AutoModelForImageTextToText, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from vlmrl.models.processor import load_processor
        from vlmrl.rewards.accuracy import accuracy_reward
        from vlmrl.rewards.format import format_reward

        from vlmrl.train.memory import keep_freed_memory as keep

        # reported with the case's setup
        self.info = {"trl": trl.__version__, "keep_freed_memory": keep() if keep_freed_memory else False}
        rows = prompts * (total_steps + 2)
        dataset = Dataset.from_list([{"prompt": trl_messages(messages), "image": sample.images[0],
                                      "answer": str(sample.answer), "answer_type": sample.answer_type}] * rows)

        def accuracy_format(completions, answer, answer_type, **_):
            """vlmrl's `accuracy_format` reward: accuracy + 0.5 * format."""
            out = []
            for c, a, k in zip(completions, answer, answer_type):
                text = c[0]["content"] if isinstance(c, list) else c
                s = {"answer": a, "answer_type": k}
                out.append(accuracy_reward(text, s)["reward"] + 0.5 * format_reward(text, s)["reward"])
            return out

        processor = load_processor(model_dir)
        processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
        args = GRPOConfig(
            output_dir=str(output_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
            use_vllm=False, per_device_train_batch_size=prompts * group_size, num_generations=group_size,
            gradient_accumulation_steps=1, num_iterations=1, max_completion_length=new_tokens,
            generation_kwargs={"min_new_tokens": new_tokens}, temperature=1.0, top_p=1.0,
            beta=0.0, epsilon=0.2, epsilon_high=0.2, loss_type="dapo", scale_rewards="group",
            learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch", max_steps=total_steps, logging_steps=10**6, save_strategy="no", report_to="none",
            disable_tqdm=True, seed=seed, dataloader_num_workers=0)
        self.gate = make_gate(TrainerCallback, count_flops)
        self.trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_format], args=args, train_dataset=dataset,
                                   processing_class=processor, callbacks=[self.gate])
        m = self.trainer.model
        if (self.trainer.args.bf16 or self.trainer.args.fp16 or getattr(m, "is_activation_checkpointing", False)
                or self.trainer.ref_model is not None or next(m.parameters()).dtype != torch.float32):
            raise RuntimeError("the TRL side must run in fp32 without activation checkpointing or a reference model")
        self.batch: dict = {}
        score = self.trainer._generate_and_score_completions

        def counted(inputs):  # record what each step really generated and trained on
            out = score(inputs)
            grid = out.get("image_grid_thw")
            self.batch = {"prompt_tokens": out["prompt_mask"].sum(1).tolist(),
                          "completion_tokens": out["completion_mask"].sum(1).tolist(),
                          "patches": int(grid.prod(-1).sum()) if grid is not None else 0}
            return out

        self.trainer._generate_and_score_completions = counted
        self.group_size = group_size
        self.error: str | None = None
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()
        self._wait(self.gate.at_gate, "reach its first step")

    def _train(self) -> None:
        try:
            self.trainer.train()
        except BaseException:  # noqa: BLE001 - reported to the driver by step()
            self.error = traceback.format_exc()
        finally:
            self.gate.done.set()
            self.gate.at_gate.set()

    def _wait(self, event: threading.Event, what: str) -> None:
        event.wait()
        if self.error:
            raise RuntimeError(f"TRL GRPOTrainer failed to {what}:\n{self.error}")

    def step(self) -> dict:
        self.gate.done.clear()
        self.gate.go.set()
        self._wait(self.gate.done, "finish a step")
        prompt, completion = self.batch["prompt_tokens"], self.batch["completion_tokens"]
        G = self.group_size
        counts = {"rows": len(prompt), "turns": 1, "prompt_tokens": prompt[::G],
                  "gen_tokens": sum(completion), "train_tokens": sum(prompt) + sum(completion),
                  "train_run_tokens": sum(prompt[::G]) + sum(completion), "score_run_tokens": 0,
                  "prefill_tokens": sum(prompt[::G]), "score_tokens": 0,
                  # each prompt's image once per group: the work vlmrl counts (TRL encodes it for every row)
                  "run_patches": self.batch["patches"] // G, "score_run_patches": 0,
                  "completion_tokens_min": min(completion), "completion_tokens_max": max(completion)}
        if self.gate.counted_flops is not None:
            counts["counted_flops"], self.gate.counted_flops = self.gate.counted_flops, None
        return {"time_s": self.gate.elapsed, "counts": counts, "torch_threads_in_trl_thread": self.gate.threads}

    def profiled_step(self) -> tuple[dict, object]:
        """One step with torch.profiler running in TRL's training thread (from `on_step_begin` to `on_step_end`)."""
        self.gate.profile_next = True
        reply = self.step()
        prof, self.gate.prof = self.gate.prof, None
        return reply, prof


def make_gate(base, count_flops: bool = False):
    """A TrainerCallback (class made here so transformers is imported lazily) that holds each step at its start,
    reads the torch thread count in the training thread and, with `count_flops`, counts the first step's FLOPs."""

    class Gate(base):
        def __init__(self):
            self.go, self.done, self.at_gate = threading.Event(), threading.Event(), threading.Event()
            self.t0, self.elapsed, self.threads = 0.0, 0.0, 0
            self.count_next, self.counter, self.counted_flops = count_flops, None, None
            self.profile_next, self.prof = False, None

        def on_step_begin(self, args, state, control, **kwargs):
            self.at_gate.set()
            self.go.wait()
            self.go.clear()
            self.threads = torch.get_num_threads()  # in TRL's training thread, where its ops run
            if self.count_next:
                from step_cases import flop_counter

                self.count_next, self.counter = False, flop_counter()
                self.counter.__enter__()
            if self.profile_next:
                from torch.profiler import ProfilerActivity, profile

                self.profile_next, self.prof = False, profile(activities=[ProfilerActivity.CPU])
                self.prof.__enter__()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.elapsed = time.perf_counter() - self.t0
            if self.prof is not None:
                self.prof.__exit__(None, None, None)
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.counted_flops, self.counter = self.counter.get_total_flops(), None
            self.done.set()

    return Gate()
