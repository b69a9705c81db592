"""Build docs/reliability.md from the tests, or check that it is up to date.

    python tools/reliability_table.py           # (re)write docs/reliability.md
    python tools/reliability_table.py --check   # exit 1 when docs/reliability.md differs from the tests

Every row of the table comes from a test. A test states what it proves with a line in its docstring::

    Reliability[images]: a 1x1 image | decoded; the pixel budget upscales it to 56x56

(category in brackets, then ``input or fault | what vlmrl does``). Every test in
``tests/test_reliability_*.py`` and ``tests/test_fuzz_*.py`` must carry such a line. Tests written
before this table, in other files, are listed in ``ELSEWHERE`` below with the same two texts; the
script fails if one of them no longer exists. ``tests/test_reliability_table.py`` runs ``--check``, so
CI fails when a test and the table drift apart.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
TAG = re.compile(r"^\s*Reliability\[(\w+)\]:\s*(.+?)\s+\|\s+(.+?)\s*$")
MUST_TAG = ("test_reliability_*.py", "test_fuzz_*.py")
NOT_TAGGED = ("test_reliability_table.py",)

CATEGORIES = {
    "images": "Images",
    "rows": "Dataset rows and files",
    "recipes": "Recipes",
    "models": "Model directories",
    "train": "Training on bad data",
    "eval": "Evaluation (`vlmrl eval`)",
    "faults": "Faults: kills, full disk, broken reward functions, NaN/inf",
    "fuzz": "Fuzzing (hypothesis)",
}

# (category, input or fault, what vlmrl does, test) for tests in files that predate this table
ELSEWHERE = [
    ("images", "a truncated PNG", "DataError naming file, row and field when the row is read (\"corrupt or truncated\")",
     "tests/test_data_images.py::test_truncated_png_named"),
    ("images", "a truncated JPEG", "DataError naming file, row and field", "tests/test_data_images.py::test_truncated_jpeg_named"),
    ("images", "a zero-byte image file", "DataError: \"empty (0 bytes)\", with file, row and field",
     "tests/test_data_images.py::test_zero_byte_file_named"),
    ("images", "a text file with a .png extension", "DataError: \"not a decodable image\", with file, row and field",
     "tests/test_data_images.py::test_non_image_with_png_extension_named"),
    ("images", "a decompression bomb (9 MP in a few kB) over max_pixels / data.max_image_pixels",
     "DataError from the header size, before any pixel is decoded", "tests/test_data_images.py::test_decompression_bomb_cap"),
    ("images", "a 16-bit PNG or TIFF", "scaled to 8 bits (0, 32896, 65535 -> 0, 128, 255)",
     "tests/test_data_images.py::test_16bit_scaled_to_8bit"),
    ("images", "32-bit integer and float images", "scaled to 8 bits", "tests/test_data_images.py::test_32bit_int_and_float_modes"),
    ("images", "a CMYK JPEG or TIFF", "converted to RGB (pure red stays red)", "tests/test_data_images.py::test_cmyk"),
    ("images", "a palette PNG with a transparent index", "composited on white",
     "tests/test_data_images.py::test_palette_with_transparency"),
    ("images", "RGBA and LA images", "composited on white", "tests/test_data_images.py::test_rgba_composited_on_white"),
    ("images", "an EXIF-rotated JPEG (orientation 6)", "rotated upright", "tests/test_data_images.py::test_exif_orientation_applied"),
    ("images", "an image URL", "DataError: URLs are not supported (no network at run time)", "tests/test_data_images.py::test_ref_kinds"),
    ("images", "a missing image file", "FileNotFoundError naming file, row and field at load",
     "tests/test_data_loaders.py::test_missing_image_file_is_file_not_found"),
    ("rows", "missing fields, null fields, wrong types (question, answer, images, choices, meta, answer_type, id)",
     "DataError naming file, row (line) and field at load", "tests/test_data_formats.py::test_field_errors_name_file_row_field"),
    ("rows", "`<image>` placeholders or image parts that do not match the number of images (vlmrl, EasyR1, TRL rows)",
     "DataError naming file, row and field", "tests/test_data_formats.py::test_placeholder_mismatch_easyr1_and_trl"),
    ("rows", "image paths escaping the dataset root: ../, absolute, a symlink pointing outside",
     "DataError naming file, row and field at load", "tests/test_data_loaders.py::test_path_escapes_are_rejected_at_load"),
    ("rows", "invalid JSON on a line, a row that is not an object, an unknown row format, an unsupported file type",
     "DataError naming file and row (line)", "tests/test_data_loaders.py::test_invalid_json_line_and_non_object"),
    ("rows", "bad rows with on_error=\"skip\"", "skipped, each message kept in dataset.skipped (counted, not silent)",
     "tests/test_data_loaders.py::test_on_error_skip_counts_rows"),
    ("recipes", "an unknown or misspelt recipe key, a value of the wrong type",
     "ConfigError naming the key, with the closest valid key", "tests/test_train.py::test_unknown_and_mistyped_keys_are_clear_errors"),
    ("recipes", "a bad recipe given to vlmrl train", "exit code 1 and the message, no traceback",
     "tests/test_train.py::test_train_cli_reports_bad_recipe"),
    ("models", "a missing directory, no config.json, a llama config.json", "FileNotFoundError / ValueError naming the path",
     "tests/test_models.py::test_bad_model_dirs_get_clear_errors"),
    ("eval", "an unknown task, a missing model directory or data path, --samples 0", "exit code 1 with the reason",
     "tests/test_eval_cli.py::test_bad_input"),
    ("eval", "--perception in tool mode, --perception-mask-prob outside [0, 1], a --perception-* flag without "
     "--perception", "exit code 1 with the reason, before any document",
     "tests/test_eval_perception.py::test_perception_bad_flags"),
    ("eval", "a samples.jsonl whose last line is missing or half-written (an interrupted run)",
     "the line is dropped and that doc redone; finished docs are kept", "tests/test_eval_cli.py::test_resume"),
    ("faults", "SIGKILL in the middle of save_checkpoint",
     "only a .tmp-* directory is left; the previous checkpoint loads and resume=auto picks it",
     "tests/test_checkpoint.py::test_sigkill_mid_save_leaves_previous_checkpoint"),
    ("faults", "a full disk (ENOSPC) in torch.save or save_pretrained",
     "CheckpointError naming the step, the reason and the intact previous checkpoint; the temporary directory is removed",
     "tests/test_checkpoint.py::test_full_disk_fails_loudly_and_keeps_previous"),
    ("faults", "leftover .tmp-* and incomplete step-* directories", "ignored by latest_checkpoint and resume",
     "tests/test_checkpoint.py::test_latest_ignores_tmp_and_incomplete_dirs"),
    ("faults", "SIGKILL of vlmrl train between steps", "resume=auto continues; metrics and weights equal an uninterrupted run",
     "tests/test_train.py::test_kill_and_resume_matches_uninterrupted_run"),
    ("faults", "a NaN loss (log-probs made NaN)",
     "the update is skipped and counted (nonfinite_steps); train.max_nonfinite_steps in a row raise FloatingPointError",
     "tests/test_train.py::test_nonfinite_loss_skips_steps_then_stops"),
    ("faults", "a metrics.jsonl line half-written by a killed run", "dropped on resume; later steps are not duplicated",
     "tests/test_metrics.py::test_resume_drops_later_steps_and_partial_line"),
    ("fuzz", "any text as a model response in the crop tool's call reading (parse_tool_call + bbox_2d checks: text, tag soup, JSON-ish calls with NaN, bools, nesting)",
     "a ToolCall with 4 finite floats, a ToolCallError with a message, or None; never an exception",
     "tests/test_tools_props.py::test_parse_never_raises_on_jsonish"),
    ("fuzz", "any box in map_box (any size, convention, out of range)",
     "a box inside the original image with positive size, or a ToolCallError", "tests/test_tools_props.py::test_accepted_box_maps_inside_original"),
    ("fuzz", "any response to every benchmark task's scorer", "every metric and per-doc score in [0, 1]",
     "tests/test_scorers_property.py::test_every_task_scorer_total_and_bounded"),
    ("fuzz", "any prediction and answers in the scorer rules (ANLS, VQA accuracy, relaxed accuracy, POPE, choices)",
     "values in [0, 1] or the documented label set", "tests/test_scorers_property.py::test_rule_functions_total_and_bounded"),
    ("fuzz", "any MathVista response and metadata", "True or False, never an exception",
     "tests/test_scorers_property.py::test_mathvista_total"),
]

HEADER = """# Reliability: bad input and faults

What vlmrl does with every bad input and fault we tried, and the test that proves it. This file is
generated from the tests (`python tools/reliability_table.py`; `tests/test_reliability_table.py` fails
when it is out of date): each row is a test's `Reliability[...]` docstring tag, or, for tests that
predate the table, an entry of `ELSEWHERE` in `tools/reliability_table.py`.

The rules behind the rows:

- **Bad input is a clear error naming the file, row and field.** Dataset problems are
  `DataError` (a `ValueError`) or `FileNotFoundError`; recipe problems `ConfigError` (a `ValueError`,
  with the closest valid key); model directories `ValueError` / `FileNotFoundError`
  (`vlmrl/models/checks.py`). The CLI turns these into exit code 1 and one line on stderr.
- **Rows are validated when a dataset is opened; images are decoded when a row is read.** A bad row
  stops `vlmrl train` before the first step. A row whose image cannot be used (truncated, empty, not an
  image, over `data.max_image_pixels`, an aspect ratio above 200) is **skipped and counted** during
  training: its error goes to stderr and the running count to `skipped_samples` in `metrics.jsonl`
  (`eval/skipped_samples` for the periodic eval split). The count is saved in checkpoints and goes on
  after a resume. `vlmrl eval` leaves such docs out of the metrics and lists them in `results.json`
  (`skipped_docs`, `skipped`); a rerun tries them again.
- **The pixel cap is `data.max_image_pixels`** (recipes; default 50 MP) or `max_pixels` /
  `max_image_pixels` in the Python API (default 100 MP). It is checked on the header size, before
  decoding, and replaces PIL's own fixed limit while it is set.
- **A reward function may fail.** A user reward fn (`reward.name: file.py:fn`, or a part of `reward.parts`)
  that raises, returns NaN/inf or runs past its part's `timeout_s` gives that trajectory reward 0; the failures
  are counted per trajectory in the traces and as `reward/reward_errors/mean` in `metrics.jsonl`. A finite reward too large for float32 (above ~3.4e38)
  is not caught there: it turns the group's advantages into NaN, and the NaN guard below handles it.
- **NaN/inf in the loss or the gradient norm** skip that optimizer step (the weights do not move) and
  are counted in `nonfinite_steps`; `train.max_nonfinite_steps` such steps in a row (default 3) stop the
  run with `FloatingPointError`. Non-finite metric values are written as `null` and listed under
  `nonfinite` in the step's record.
- **Checkpoints are atomic** (written to `.tmp-*`, fsynced, renamed). A kill or a full disk during a
  save leaves the previous checkpoint intact; a failed save raises `CheckpointError` (the run stops
  loudly); `train.resume=auto` continues from the newest complete checkpoint. `vlmrl eval` appends and
  flushes each finished doc, so a killed eval resumes where it stopped.

Known gaps (not covered by a row below):

- `vlmrl eval` decodes benchmark images with plain PIL (`vlmrl/data/images.py:LazyImage`), as
  lmms-eval does: no EXIF rotation, the alpha channel dropped, PIL's own pixel limit.
"""


def _tests(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            yield node.name, ast.get_docstring(node) or ""


def collect(root: Path = ROOT) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """(rows, problems): rows (category, input, behaviour, test id) in category order, then file order."""
    rows, problems = [], []
    tests = root / "tests"
    must = {p for pattern in MUST_TAG for p in tests.glob(pattern)} - {tests / n for n in NOT_TAGGED}
    defined = {}
    for path in sorted(tests.glob("test_*.py")):
        for name, doc in _tests(path):
            test_id = f"tests/{path.name}::{name}"
            defined[test_id] = True
            tags = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith("Reliability")]
            for line in tags:
                m = TAG.match(line)
                if m is None or m.group(1) not in CATEGORIES:
                    problems.append(f"{test_id}: malformed tag {line!r} (want 'Reliability[category]: input "
                                    f"| behaviour' with a category in {', '.join(CATEGORIES)})")
                    continue
                rows.append((m.group(1), m.group(2), m.group(3), test_id))
            if path in must and not tags:
                problems.append(f"{test_id}: has no 'Reliability[category]: input | behaviour' line in its docstring")
    for category, what, behaviour, test_id in ELSEWHERE:
        if test_id not in defined:
            problems.append(f"ELSEWHERE lists {test_id}, which does not exist")
        rows.append((category, what, behaviour, test_id))
    order = list(CATEGORIES)
    rows.sort(key=lambda r: order.index(r[0]))  # stable: file order within a category
    return rows, problems


def render(rows) -> str:
    out = [HEADER]
    tests = {r[3] for r in rows}
    out.append(f"{len(rows)} inputs and faults, proved by {len(tests)} tests.\n")
    for category, title in CATEGORIES.items():
        mine = [r for r in rows if r[0] == category]
        if not mine:
            continue
        out.append(f"\n## {title}\n\n| input / fault | what vlmrl does | test |\n|---|---|---|\n")
        for _, what, behaviour, test_id in mine:
            out.append(f"| {what} | {behaviour} | `{test_id}` |\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--out", type=Path, default=DOC, help=f"default: {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    rows, problems = collect()
    if problems:
        print("reliability tags:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    text = render(rows)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.out), "from the tests",
                                        lineterm="", n=1)
            print(f"{args.out} is out of date; run: python tools/reliability_table.py\n" + "\n".join(list(diff)[:40]),
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
