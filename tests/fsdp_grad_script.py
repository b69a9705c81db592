"""Run by tests/test_fsdp.py (one plain process, or 2 processes under `accelerate launch`): the gradient of one
trainer update on a fixed set of trajectories, each rank holding some of the groups.

    python fsdp_grad_script.py MODEL DATA OUT_DIR [ROLLOUTS.pt]

With one process it rolls out (tool mode for the DTPO recipe, direct mode for GRPO), saves the trajectories to
OUT_DIR/rollouts-<recipe>.pt and the gradient to OUT_DIR/grad-<recipe>.pt; with several it reads the rollouts the
one-process run saved, gives rank r the groups {g : owner(g) == r} (uneven: rank 0 one group, rank 1 the rest, so
the ranks hold different numbers of rows, tokens and micro-batches), and writes the gradient it sees on rank 0.
Advantages are fixed random numbers per token (an untrained model earns no reward); for DTPO each response's
first half is marked a non-final turn, so both of DTPO's terms count.
"""

import sys
from pathlib import Path

import torch

from vlmrl.config import load_config
from vlmrl.train.batch import RolloutBatch
from vlmrl.train.distributed import make_accelerator
from vlmrl.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
model, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
acc = make_accelerator(cpu=True)
W, rank = acc.num_processes, acc.process_index
tag = {1: "one"}.get(W, "ddp" if not acc.is_fsdp2 else "fsdp2")
calls = {"all_gather": 0}

for recipe in ("quickstart", "grpo"):
    micro = 16 if W == 1 else 1
    cfg = load_config(ROOT / "recipes" / f"{recipe}.yaml", [
        f"model.path={model}", f"data.train={data / 'train.jsonl'}", "train.output_dir=" + str(out / "run"),
        "rollout.group_size=2", "rollout.max_new_tokens=12", "model.dtype=float32", "model.device=cpu",
        "train.max_grad_norm=1.0e9", f"train.micro_batch_size={micro}", "algo.entropy_coef=0.01", "train.seed=3"])
    trainer = Trainer(cfg, acc)
    if W == 1:
        samples = [trainer.stream.dataset[i] for i in range(4)]
        trajs = trainer.engine.rollout(samples, 2, generator=torch.Generator().manual_seed(5))
        torch.save(trajs, out / f"rollouts-{recipe}.pt")
    else:
        trajs = torch.load(out / f"rollouts-{recipe}.pt", weights_only=False)
        # under FSDP the rollout reads the gathered copy: no collective during sampling
        real = torch.distributed.all_gather_into_tensor

        def counting(*a, **k):
            calls["all_gather"] += 1
            return real(*a, **k)

        torch.distributed.all_gather_into_tensor = counting
        samples = [trainer.stream.dataset[i] for i in range(2)]
        trainer.engine.rollout(samples, 2, generator=torch.Generator().manual_seed(5 + rank))
        torch.distributed.all_gather_into_tensor = real
        owner = lambda g: 0 if g == 0 else 1  # noqa: E731
        trajs = [t for t in trajs if owner(t.group_id) == rank]
    for t in trajs:
        if recipe == "quickstart":  # first half of the response: a non-final turn
            pos = [i for i, m in enumerate(t.response_mask) if m]
            half = set(pos[:len(pos) // 2])
            t.turn_ids = [0 if i in half else (1 if m else -1) for i, m in enumerate(t.response_mask)]
    batch = RolloutBatch.from_trajectories(trajs, [True] * len(trajs))
    adv = torch.zeros(batch.loss_mask.shape)
    for i, t in enumerate(trajs):
        g = torch.Generator().manual_seed(1000 * t.group_id + len(t.ids))
        vals = torch.randn(len(t.ids), generator=g)
        adv[i, adv.shape[1] - len(t.ids):] = vals
    batch.advantages = adv * batch.response_mask
    grads = {}

    def capture():
        for name, p in trainer.policy.model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name.removeprefix("module.")] = g.detach().clone()

    trainer.optimizer.step = capture
    trainer.update(batch)
    if rank == 0:
        torch.save({"grads": grads, "rows": len(trajs), "gathers_in_rollout": calls["all_gather"]},
                   out / f"grad-{recipe}-{tag}.pt")
    acc.wait_for_everyone()

if W > 1:
    import gc

    del trainer
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
