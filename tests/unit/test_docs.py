"""Generated documents stay in step with the code."""

from __future__ import annotations

import json
from pathlib import Path

from allotment.config.models import Policy
from allotment.config.reference import render_reference

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current() -> None:
    current = (ROOT / "docs/reference/config.md").read_text()
    assert current == render_reference(), (
        "run: allot config reference --out docs/reference/config.md"
    )


def test_json_schema_is_current() -> None:
    current = json.loads((ROOT / "docs/reference/allotment.schema.json").read_text())
    assert current == Policy.model_json_schema(mode="validation"), (
        "run: allot config schema > docs/reference/allotment.schema.json"
    )


def test_every_field_is_described() -> None:
    text = render_reference()
    for line in text.splitlines():
        if line.startswith("| `"):
            assert not line.rstrip().endswith("|  |"), f"undocumented field: {line}"
