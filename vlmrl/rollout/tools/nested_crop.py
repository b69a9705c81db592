"""The nested crop tool: crop from any image seen so far, for N-turn zooming (thinking-with-images loops).

    <tool_call>{"name": "crop", "arguments": {"image_index": 1, "bbox_2d": [x1, y1, x2, y2]}}</tool_call>

``image_index`` names the image the box is drawn on: 0 is the first view of the sample's first image, 1 the
first crop, 2 the second, ... (the views of the sample's other images are not addressable). The box is in
that image's seen coordinates (the model's convention), mapped to the original image through that image's
own box (vlmrl.rollout.tools.crop.map_box with ``region``), and cut from the ORIGINAL, full-resolution image,
so zooming twice never magnifies a magnified image. A bad index is a ToolCallError the model sees. Record:
``image_index`` plus the crop tool's ``bbox``, ``box_seen`` (on image ``image_index``) and ``box_original``.
"""

from __future__ import annotations

from vlmrl.rollout.tools.base import ToolCallError, ToolContext
from vlmrl.rollout.tools.crop import Box, CropTool
from vlmrl.rollout.tools.parse import short_json

INDEX_TEXT = ("Which image the box is on: 0 = the first image you saw, 1 = the first crop, "
              "2 = the second crop, ...")


def crop_images(seen) -> list:
    """The images ``image_index`` counts: the first view of the sample's first image, then every crop."""
    return [im for k, im in enumerate(seen) if k == 0 or im.kind == "crop"]


class NestedCropTool(CropTool):
    """``bbox_2d`` on the image ``image_index`` (0 = first view, k = the k-th crop); crops the original."""

    def schema(self, coords: str = "absolute", style: str = "full") -> dict:
        out = super().schema(coords, style)
        params = out["function"]["parameters"]
        params["properties"] = {"image_index": {"type": "integer", "minimum": 0, "description": INDEX_TEXT},
                                **params["properties"]}
        params["required"] = ["image_index", *params["required"]]
        out["function"]["description"] += " It can crop from the first image or from an earlier crop."
        return out

    def short_prompt(self, coords: str = "absolute") -> str:
        return super().short_prompt(coords).replace('"arguments": {', '"arguments": {"image_index": k, ', 1)

    def example(self) -> str:
        return ('<tool_call>{"name": "%s", "arguments": {"image_index": 0, "bbox_2d": [x1, y1, x2, y2]}}</tool_call>'
                % self.name)

    def first_view_arguments(self, bbox: list[float]) -> dict:
        return {"image_index": 0, "bbox_2d": bbox}

    def validate(self, arguments: dict) -> tuple[int, Box] | ToolCallError:
        if "image_index" not in arguments:
            return ToolCallError(f'Error: "arguments" has no "image_index". Use: {self.example()}', "missing_index")
        index = arguments["image_index"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            return ToolCallError(f"Error: image_index must be a whole number >= 0, got {short_json(index)}.",
                                 "bad_index")
        bbox = super().validate(arguments)
        return bbox if isinstance(bbox, ToolCallError) else (index, bbox)

    def run(self, args: tuple[int, Box], context: ToolContext):
        index, bbox = args
        images = crop_images(context.seen)
        if index >= len(images):
            last = "0 (the first image)" if len(images) == 1 else f"0 to {len(images) - 1}"
            return ToolCallError(f"Error: image_index {index} does not exist; the images you have seen are {last}.",
                                 "bad_index", record={"image_index": index, "bbox": list(bbox)})
        return self.crop(bbox, images[index], context.originals[0], context, image_index=index)
