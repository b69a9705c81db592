"""The trajectory record: what one rollout produced, token by token, and its JSONL form.

Per token: `ids`, `response_mask` (1 exactly on policy-sampled tokens), `turn_ids` (-1 on the prompt;
k on assistant turn k and on the tool observation that answers turn k) and `logprobs` (the sampling-time
log-probs of policy tokens, 0 elsewhere). Per trajectory: its group id (the samples of one prompt
occurrence share it; group statistics such as advantages are taken per id), the assistant turns' texts,
every image with its seen size (and, for crops, the box in seen and original coordinates), every tool call,
the finish reason ("answered", "max_turns", "length", "error") and the visual-token count.

`save_traces(path, trajs)` writes one JSON line per trajectory and the images as PNG files in
`<path stem>_images/` beside it; `load_traces(path)` reads them back (images lazily, as paths).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FINISH_REASONS = ("answered", "max_turns", "length", "error")


@dataclass
class TrajImage:
    """One image the model saw: the (low-resolution) input view or a crop."""

    kind: str  # "input" or "crop"
    seen_size: tuple[int, int]  # (w, h) as fed to the vision tower
    original_size: tuple[int, int]  # (w, h) of the source image
    visual_tokens: int
    turn: int  # -1 for prompt images, k for the crop answering turn k
    box_seen: list[float] | None = None  # crop box in the coordinates of the view the model saw
    box_original: list[int] | None = None  # crop box in original pixels
    path: str | None = None  # file the image was saved to (set by save_traces / load_traces)
    image: Any = field(default=None, repr=False, compare=False)  # PIL image (not serialised)
    source: int = 0  # which of the sample's images it shows (the prompt's k-th image, or the crop's source)


@dataclass
class ToolCallRecord:
    """One tool call: the turn it ends, its raw ``<tool_call>`` block, whether it ran, the error the model
    was shown, the tool's name, the ``arguments`` object as written, and the tool's own ``record``
    (the crop tools': bbox as written, box_seen, box_original; vlmrl.rollout.tools)."""

    turn: int
    raw: str
    valid: bool
    error: str | None = None
    name: str | None = None
    arguments: dict | None = None
    record: dict = field(default_factory=dict)

    FIELDS = ("turn", "raw", "valid", "error", "name", "arguments")

    def __post_init__(self):
        clash = sorted(set(self.record) & set(self.FIELDS))
        if clash:
            raise ValueError(f"tool record keys {clash} clash with the tool-call fields {list(self.FIELDS)}")

    @property
    def bbox(self) -> list[float] | None:
        """The crop tools' box as the model wrote it (None for other tools and unparsed calls)."""
        return self.record.get("bbox")

    @property
    def box_seen(self) -> list[float] | None:
        """The crop tools' box in seen-image pixels, after convention, clamp and expansion."""
        return self.record.get("box_seen")

    @property
    def box_original(self) -> list[int] | None:
        """The crop tools' box in original-image pixels (DTPO's crop rewards use it)."""
        return self.record.get("box_original")

    def to_json(self) -> dict:
        """The trace form: the fixed fields, then the tool's record entries at the same level (so a crop call
        keeps the ``bbox``/``box_seen``/``box_original`` keys that traces always had)."""
        return {**{k: getattr(self, k) for k in self.FIELDS}, **self.record}

    @classmethod
    def from_json(cls, d: dict) -> "ToolCallRecord":
        """Read a trace's tool call, new or old (old ones have only turn, raw, valid, bbox, box_seen,
        box_original, error): every key that is not a fixed field is the tool's record."""
        return cls(**{k: d[k] for k in cls.FIELDS if k in d}, record={k: v for k, v in d.items() if k not in cls.FIELDS})


@dataclass
class Trajectory:
    prompt_index: int  # which prompt of the rollout call
    sample_index: int  # which of the samples of that prompt
    sample_id: str
    question: str
    answer: str
    answer_type: str
    ids: list[int]
    response_mask: list[int]
    turn_ids: list[int]
    logprobs: list[float]
    prompt_len: int
    turns: list[str] = field(default_factory=list)  # assistant turn texts
    images: list[TrajImage] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    finish_reason: str = "error"
    visual_tokens: int = 0
    mode: str = "tool"
    choices: list[str] | None = None
    meta: dict = field(default_factory=dict)
    group_id: int = -1  # the group (one prompt occurrence) it belongs to, unique within a training step; -1 unknown
    rewards: dict = field(default_factory=dict)  # filled by the trainer / eval: total and parts
    token_stats: dict = field(default_factory=dict)  # optional per-token arrays (advantage, perception_kl)
    vision: list = field(default_factory=list, repr=False, compare=False)  # VisionInputs, in sequence order

    @property
    def called_tool(self) -> bool:
        return bool(self.tool_calls)

    @property
    def final_text(self) -> str:
        return self.turns[-1] if self.turns else ""

    @property
    def num_response_tokens(self) -> int:
        return sum(self.response_mask)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("vision")
        for im in d["images"]:
            im.pop("image", None)
        d["tool_calls"] = [c.to_json() for c in self.tool_calls]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Trajectory":
        d = dict(d)
        d["images"] = [TrajImage(**{k: v for k, v in im.items()}) for im in d.get("images", [])]
        d["tool_calls"] = [ToolCallRecord.from_json(c) for c in d.get("tool_calls", [])]
        for im in d["images"]:
            im.seen_size, im.original_size = tuple(im.seen_size), tuple(im.original_size)
        return cls(**d)


def save_traces(path: str | Path, trajs: list[Trajectory], step: int | None = None, append: bool = False) -> Path:
    """Write trajectories as JSONL with their images as PNG files beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img_dir = path.with_name(path.stem + "_images")
    mode = "a" if append else "w"
    with path.open(mode) as f:
        for t in trajs:
            tag = f"s{step}_" if step is not None else ""
            for j, im in enumerate(t.images):
                if im.image is not None:
                    img_dir.mkdir(exist_ok=True)
                    name = f"{tag}p{t.prompt_index}_g{t.sample_index}_{j}_{im.kind}.png"
                    im.image.save(img_dir / name)
                    im.path = f"{img_dir.name}/{name}"
            d = t.to_json()
            if step is not None:
                d["step"] = step
            f.write(json.dumps(d) + "\n")
    return path


def iter_jsonl(path: str | Path):
    """(line number, parsed object) for each non-blank line; a bad line is a ValueError naming it."""
    path = Path(path)
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e})") from None


def load_traces(path: str | Path) -> list[Trajectory]:
    """Read trajectories back; image paths are made absolute, pixels are not loaded."""
    path = Path(path)
    out = []
    for n, d in iter_jsonl(path):
        d.pop("step", None)
        try:
            t = Trajectory.from_json(d)
        except TypeError as e:
            raise ValueError(f"{path}, line {n}: not a trajectory record ({e})") from None
        for im in t.images:
            if im.path:
                im.path = str(path.parent / im.path)
        out.append(t)
    return out
