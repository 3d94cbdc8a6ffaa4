"""README's parameter table says what the pipelines' specs say: every
parameter of every built-in pipeline (and the sampling ones), with its
default, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from videojobs.pipelines import builtin_catalogue
from videojobs.pipelines.specs import SAMPLING_SPEC

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_parameters() -> dict[str, str]:
    """`pipeline.name` (or `name` for sampling) -> the default README states."""
    text = README.read_text()
    table = text[text.index("| parameter | default | meaning |") :].split("\n\n", 1)[0]
    documented = {}
    for row in table.splitlines()[2:]:
        names_cell, defaults_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`([^`]+)`", names_cell)
        # A value in backquotes is one default even with commas inside it.
        defaults = re.findall(r"`[^`]*`|[^,]+", defaults_cell)
        assert len(names) == len(defaults), row
        prefix = names[0].rpartition(".")[0]
        for name, default in zip(names, defaults, strict=True):
            full = name if "." in name or not prefix else f"{prefix}.{name}"
            documented[full] = default.strip().strip("`").split(" (")[0]
    return documented


def spec_parameters() -> dict[str, object]:
    catalogue = builtin_catalogue(include_entry_points=False)
    found = {p.name: p.default for p in SAMPLING_SPEC.parameters}
    for name in catalogue.names:
        for parameter in catalogue.spec(name).parameters:
            found[f"{name}.{parameter.name}"] = parameter.default
    return found


def _same(written: str, default: object) -> bool:
    if isinstance(default, bool):
        return written == str(default).lower()
    if isinstance(default, int | float):
        return float(written) == float(default)
    return written == str(default)


def test_every_parameter_is_documented_once_and_only_those():
    assert set(readme_parameters()) == set(spec_parameters())


@pytest.mark.parametrize("name", sorted(spec_parameters()))
def test_the_documented_default_is_the_real_one(name):
    written, default = readme_parameters()[name], spec_parameters()[name]
    assert _same(written, default), f"README says {name} defaults to {written!r}, spec {default!r}"
