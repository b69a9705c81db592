"""Checks that a directory is a loadable Qwen-VL checkpoint, before transformers tries to load it.

transformers' own errors for a wrong or incomplete directory are an OSError about the hub, a tokenizer
ValueError that does not name the directory, or a safetensors error about a header. `check_model_dir`
turns each case into a ValueError / FileNotFoundError (the CLI's exit code 1) naming the path and what
is wrong:

- the directory does not exist                                  -> FileNotFoundError
- no config.json, config.json not a JSON object                 -> ValueError
- model_type not qwen2_vl / qwen2_5_vl / qwen3_vl (llama, gpt2)   -> ValueError
- no weights (model.safetensors, a sharded index, pytorch_model.bin) or a shard missing -> FileNotFoundError
- a safetensors file whose header is not valid (truncated, not safetensors) -> ValueError
- no tokenizer (tokenizer.json, or vocab.json + merges.txt)     -> FileNotFoundError
- no image processor config (preprocessor_config.json or processor_config.json) -> FileNotFoundError
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _weights(path: Path) -> list[Path]:
    for name in WEIGHT_INDEXES:
        index = path / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{index}: not a valid weight index ({type(e).__name__}: {e})") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing or not shards:
                raise FileNotFoundError(f"{index} lists weight shards that are missing: {missing[:5] or 'none listed'}")
            return [path / s for s in shards]
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]
    raise FileNotFoundError(f"{path} has no model weights: looked for {', '.join(WEIGHT_FILES + WEIGHT_INDEXES)}")


def _check_safetensors(file: Path) -> None:
    """The 8-byte header length and the JSON header of a safetensors file (not the tensors)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{file} is not a valid safetensors file ({size} bytes; truncated or another format)")
        try:
            json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{file} is not a valid safetensors file (its header is not JSON)") from None


def check_model_dir(path: str | Path) -> str:
    """The Qwen-VL family of a checkpoint directory after checking it is complete (see the module doc)."""
    from vlmrl.models.policy import detect_family

    path = Path(path)
    cfg = path / "config.json"
    if path.is_dir() and cfg.is_file():
        try:
            obj = json.loads(cfg.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{cfg}: must be a JSON object, got {type(obj).__name__}")
    family = detect_family(path)  # missing directory, no config.json, not a Qwen-VL model_type
    for file in _weights(path):
        if file.suffix == ".safetensors":
            _check_safetensors(file)
    if not ((path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())):
        raise FileNotFoundError(f"{path} has no tokenizer: looked for tokenizer.json, or vocab.json + merges.txt")
    if not any((path / name).is_file() for name in PROCESSOR_FILES):
        raise FileNotFoundError(f"{path} has no image processor config: looked for {' or '.join(PROCESSOR_FILES)}")
    return family
