"""Training: one RL step (trainer.py) over the step's rollout batch (batch.py) and its loss terms (loss.py), the
outer loop with checkpoints, metrics, periodic eval and plots (run.py), the prompt order (stream.py), learning-rate
schedules (schedule.py), the SFT warm start (sft.py). Names are imported on first use."""

from vlmrl._lazy import lazy_exports

_EXPORTS = {
    "Trainer": "vlmrl.train.trainer", "run_training": "vlmrl.train.run", "RolloutBatch": "vlmrl.train.batch",
    "PromptStream": "vlmrl.train.stream", "make_scheduler": "vlmrl.train.schedule",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
