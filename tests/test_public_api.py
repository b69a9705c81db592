"""The public Python API: the names the README and DESIGN document import from where they say, `import vlmrl`
registers the image-only processors, and the README's "Python API" example runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vlmrl

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "VLMRL_NO_PROGRESS": "1"}


@pytest.mark.parametrize("package", ["vlmrl", "vlmrl.models", "vlmrl.train", "vlmrl.evaluation", "vlmrl.rollout",
                                     "vlmrl.algos", "vlmrl.data", "vlmrl.rewards"])
def test_every_exported_name_resolves(package):
    import importlib

    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
        assert name in dir(mod)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        getattr(mod, "no_such_name")


def test_lazy_names_are_the_objects_of_their_modules():
    from vlmrl.models.hf_sampler import HFSampler
    from vlmrl.rollout.engine import RolloutEngine
    from vlmrl.rollout.tools.parse import parse_tool_call
    from vlmrl.train.trainer import Trainer

    assert vlmrl.HFSampler is HFSampler and vlmrl.RolloutEngine is RolloutEngine and vlmrl.Trainer is Trainer
    from vlmrl.rollout import RolloutEngine as again, parse_tool_call as parse  # DESIGN: from vlmrl.rollout import ...

    assert again is RolloutEngine and parse is parse_tool_call
    assert vlmrl.parse_tool_call("no call here") is None


def test_design_public_algorithm_names():
    from vlmrl import algos

    for name in ("grpo_advantages", "dtpo_advantages", "policy_loss", "kl_estimate", "perception_kl",
                 "random_patch_mask"):
        assert callable(getattr(algos, name)), name


@pytest.mark.parametrize("first", ["vlmrl", "transformers"])
def test_import_vlmrl_registers_the_image_only_processor(tiny_dirs, first):
    """In a fresh interpreter, `import vlmrl` before or after transformers: AutoProcessor on a vlmrl checkpoint
    handles images (without the registration it silently returns a bare tokenizer); `import vlmrl` alone does not
    import transformers (vlmrl/_autoprocessor.py registers when transformers loads its AutoProcessor module)."""
    imports = {"vlmrl": "import sys, vlmrl\nassert 'transformers' not in sys.modules\nfrom transformers import AutoProcessor\n",
               "transformers": "from transformers import AutoProcessor\nimport vlmrl\n"}[first]
    code = (imports + "from PIL import Image\n"
            f"p = AutoProcessor.from_pretrained({str(tiny_dirs['qwen2_5_vl'])!r})\n"
            "out = p.image_processor(images=[Image.new('RGB', (56, 56))], return_tensors='pt')\n"
            "print(type(p).__name__, tuple(out['image_grid_thw'][0].tolist()))\n")
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["QwenVLImageProcessor", "(1,", "4,", "4)"]  # 56 px / 14 px patches = 4 x 4


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "example.py").write_text(code)
    res = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert [int(line.split()[0]) for line in lines[:5]] == [0, 0, 1, 1, 1]  # group ids of n_per_prompt=[2, 3]
    assert lines[5] == "tensor([ 0.7071, -0.7071,  0.5773,  0.5773, -1.1547])"
    run = tmp_path / lines[6]
    assert (run / "metrics.jsonl").read_text().count("\n") == 1 and (run / "model" / "config.json").is_file()
