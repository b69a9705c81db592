"""Tokens: finding and loading the tokenizer of a run or checkpoint, and TokenDecoder (per-token texts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmrl.viewer.read import _step_of_name

COLLAPSE_TOKENS = ("<|image_pad|>", "<|video_pad|>")


def _has_tokenizer(d: Path) -> bool:
    return d.is_dir() and ((d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists())


def find_tokenizer_dir(source: Path) -> Path | None:
    """A tokenizer near the traces: the run dir itself, its model/, or its newest checkpoints/*/."""
    source = Path(source)
    bases = [source] if source.is_dir() else []
    start = source if source.is_dir() else source.parent
    bases += [start, start.parent]
    seen = set()
    for base in bases:
        if base in seen:
            continue
        seen.add(base)
        if _has_tokenizer(base):
            return base
        if _has_tokenizer(base / "model"):
            return base / "model"
        ck = base / "checkpoints"
        if ck.is_dir():
            cands = [c for c in ck.iterdir() if _has_tokenizer(c)]
            if cands:
                return max(cands, key=lambda c: (_step_of_name(c) or -1, c.name))
    return None


def load_tokenizer(model: str | Path | None, source: Path) -> tuple[Any, str | None, str | None]:
    """(tokenizer or None, where it came from, note for the reader)."""
    if model is not None:
        model = Path(model)
        if not model.exists():
            raise FileNotFoundError(f"--model {model}: no such directory")
        where = model
    else:
        where = find_tokenizer_dir(source)
        if where is None:
            return None, None, ("no tokenizer found (looked for tokenizer.json in the run directory, model/ and "
                                "checkpoints/*/): showing turn texts without per-token colouring; pass --model DIR")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any loading failure is reported the same way
        if model is not None:
            raise ValueError(f"--model {model}: cannot load a tokenizer ({type(e).__name__}: {e})") from None
        return None, None, f"could not load the tokenizer in {where} ({type(e).__name__}: {e}); no token view"
    return tok, str(where), None


class TokenDecoder:
    """Per-token texts; a character split over several byte-level tokens shows on the token completing it."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab: dict[int, str] = {}
        self.collapse = set()
        for t in COLLAPSE_TOKENS:
            i = tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != getattr(tok, "unk_token_id", None):
                self.collapse.add(i)

    def one(self, i: int) -> str:
        s = self.vocab.get(i)
        if s is None:
            s = self.vocab[i] = self.tok.decode([i], skip_special_tokens=False)
        return s

    def decode(self, ids: list[int]) -> dict[int, str]:
        """Overrides: position -> text where the text differs from the single-token decode."""
        over: dict[int, str] = {}
        start = None
        for k, i in enumerate(ids):
            s = self.one(i)
            if start is None and not s.endswith("\ufffd"):
                continue
            if start is None:
                start = k
            text = self.tok.decode(ids[start:k + 1], skip_special_tokens=False)
            if text.endswith("\ufffd") and k - start < 8:
                over[k] = ""
                continue
            over[k] = text
            start = None
        return over
