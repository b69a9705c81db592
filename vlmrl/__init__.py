"""vlmrl: reinforcement learning of vision-language models on visual question answering.

The Python API (README "Python API"), importable from here; each name lives in the module shown:

- recipes: `load_config`, `Config`, `RolloutConfig`, `HFSamplerConfig`, `ConfigError` (vlmrl.config)
- models: `Policy` (load, log-probs), `make_tiny` (vlmrl.models); generation through the `Sampler` interface:
  `Prompt`, `SamplingParams`, `Generation`, `HFSampler` (vlmrl.models.sampler, vlmrl.models.hf_sampler)
- rollouts: `RolloutEngine`, `Trajectory`, `save_traces`, `load_traces` (vlmrl.rollout); tools: `parse_tool_call`,
  `Tool`, `register_tool`, `CropTool`, `map_box` (vlmrl.rollout.tools)
- data and rewards: `load_dataset`, `Sample` (vlmrl.data); `register_reward`, `score_trajectories` (vlmrl.rewards)
- training and evaluation: `Trainer`, `run_training` (vlmrl.train); `load_task`, `evaluate`, `EvalSettings`
  (vlmrl.evaluation)
- the pure algorithm functions stay in `vlmrl.algos` (grpo_advantages, dtpo_advantages, policy_loss, ...).

`import vlmrl` registers vlmrl's image-only Qwen-VL processors with transformers' `AutoProcessor`, so
`AutoProcessor.from_pretrained(<a vlmrl checkpoint>)` returns a processor that handles images, not a bare tokenizer
(without importing transformers itself: vlmrl/_autoprocessor.py). The other names are imported on first use.
"""

from vlmrl._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "vlmrl.config", "ConfigError": "vlmrl.config", "HFSamplerConfig": "vlmrl.config",
    "RolloutConfig": "vlmrl.config", "load_config": "vlmrl.config",
    "Policy": "vlmrl.models.policy", "make_tiny": "vlmrl.models.tiny",
    "Generation": "vlmrl.models.sampler", "Prompt": "vlmrl.models.sampler", "Sampler": "vlmrl.models.sampler",
    "SamplingParams": "vlmrl.models.sampler", "HFSampler": "vlmrl.models.hf_sampler",
    "RolloutEngine": "vlmrl.rollout.engine", "Trajectory": "vlmrl.rollout.trajectory",
    "save_traces": "vlmrl.rollout.trajectory", "load_traces": "vlmrl.rollout.trajectory",
    "parse_tool_call": "vlmrl.rollout.tools", "Tool": "vlmrl.rollout.tools", "register_tool": "vlmrl.rollout.tools",
    "CropTool": "vlmrl.rollout.tools", "map_box": "vlmrl.rollout.tools",
    "load_dataset": "vlmrl.data.loaders", "Sample": "vlmrl.data.sample",
    "register_reward": "vlmrl.rewards.registry", "score_trajectories": "vlmrl.rewards.trajectories",
    "Trainer": "vlmrl.train.trainer", "run_training": "vlmrl.train.run",
    "load_task": "vlmrl.evaluation.tasks", "evaluate": "vlmrl.evaluation.harness",
    "EvalSettings": "vlmrl.evaluation.harness",
}
__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


from vlmrl._autoprocessor import install as _install_processors  # noqa: E402

_install_processors()  # AutoProcessor -> vlmrl's image-only processors (registered when transformers loads it)
