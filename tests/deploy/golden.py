"""Golden files: the rendered output pinned in tests/data/golden/<case>/; a difference fails, naming the file.
MODELYARD_UPDATE_GOLDEN=1 rewrites them (and the test then fails once more, so an update is never silent)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
UPDATE_ENV = "MODELYARD_UPDATE_GOLDEN"


def check_golden(case: str, files: dict[str, str]) -> None:
    folder = GOLDEN / case
    if os.environ.get(UPDATE_ENV) == "1":
        shutil.rmtree(folder, ignore_errors=True)
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        pytest.fail(f"{folder}: golden files rewritten ({UPDATE_ENV}=1); review the diff and run again without it")
    pinned = {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert sorted(pinned) == sorted(files), f"{case}: files differ from {folder} (set {UPDATE_ENV}=1 to update)"
    for name, text in files.items():
        assert text == pinned[name], f"{case}/{name} differs from the golden file (set {UPDATE_ENV}=1 to update)"
