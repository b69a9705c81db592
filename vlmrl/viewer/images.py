"""Images: ImageStore, the distinct image files of a page as base64 data URIs."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
                (b"BM", "image/bmp"))


class ImageStore:
    """Distinct image files as data URIs, keyed by a short content hash."""

    def __init__(self):
        self.uris: dict[str, str] = {}
        self.by_path: dict[str, str | None] = {}
        self.problems: list[str] = []

    def add(self, path: Path | None) -> str | None:
        if path is None:
            return None
        key = str(path)
        if key in self.by_path:
            return self.by_path[key]
        h = None
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            self.problems.append(f"image {path}: cannot read ({e.strerror or e})")
        else:
            mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
            if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
                mime = "image/webp"
            if mime is None:
                self.problems.append(f"image {path}: not a PNG/JPEG/GIF/WEBP/BMP file")
            else:
                h = "i" + hashlib.sha1(data).hexdigest()[:12]
                if h not in self.uris:
                    self.uris[h] = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        self.by_path[key] = h
        return h
