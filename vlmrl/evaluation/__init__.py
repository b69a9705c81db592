"""Benchmark evaluation: task specs (tasks.py, eval/*.yaml), reading their files (task_files.py) and building
prompts (task_docs.py), the official scorers (scorers/), the harness that rolls a policy out on a task and scores
it (harness.py; also periodic eval during training), `vlmrl eval` / `vlmrl score` (cli.py, score.py). Names are
imported on first use."""

from vlmrl._lazy import lazy_exports

_EXPORTS = {
    "Task": "vlmrl.evaluation.tasks", "load_task": "vlmrl.evaluation.tasks", "list_tasks": "vlmrl.evaluation.tasks",
    "EvalSettings": "vlmrl.evaluation.harness", "evaluate": "vlmrl.evaluation.harness",
    "evaluate_samples": "vlmrl.evaluation.harness",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
