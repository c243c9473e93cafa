"""Notebook hygiene: committed without outputs, a papermill parameters cell of flat annotated
literals, seeded, and a paper-scale parameters file whose keys the notebook knows.
(Executing them is nbval's job: `pytest --nbval-lax notebooks/`, part of `make test`.)"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_quickstart")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them (nbstripout {path.name})"


def _parameters(nb) -> tuple[int, dict[str, object]]:
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    tagged = [(i, c) for i, c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    i, cell = tagged[0]
    assert (i, cell) == code[0], "the parameters cell is the first code cell"
    values = {}
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name), (
            f"parameters are flat annotated assignments, got: {ast.unparse(stmt)}")
        values[stmt.target.id] = ast.literal_eval(stmt.value)  # literals only: papermill injects these
    lines = [ln for ln in cell.source.splitlines() if ln.strip()]
    assert all("#" in ln for ln in lines), "every parameter has a trailing comment"
    return i, values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_and_seed(path):
    nb = nbformat.read(path, as_version=4)
    i, params = _parameters(nb)
    following = next(c for c in nb.cells[i + 1 :] if c.cell_type == "code")
    assert "set_seed(" in following.source and "smoke_test()" in following.source
    paper = ROOT / "configs" / "paper" / (path.stem + ".yaml")
    if path.stem != "00_quickstart":
        assert paper.exists(), f"paper-scale parameters file {paper.relative_to(ROOT)} missing"
    if paper.exists():
        keys = set(yaml.safe_load(paper.read_text()) or {})
        assert keys <= set(params), f"{paper.name} sets unknown parameters {keys - set(params)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_data_prep", "05_figures"])
def test_notebook_falls_back_to_samples_offline(name, tmp_path, monkeypatch):
    """A user's machine: no ../shared, no OTM_DATA, empty cache. The notebook says so and runs."""
    import papermill

    monkeypatch.setenv("OTM_SHARED_DATA", str(tmp_path / "no-shared"))
    monkeypatch.setenv("OTM_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.delenv("OTM_DATA", raising=False)
    monkeypatch.setenv("OTM_SMOKE", "1")
    monkeypatch.setenv("OTM_FIGURES", str(tmp_path / "figures"))
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), cwd=str(ROOT / "notebooks"),
                               progress_bar=False)
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
    assert "falling back" in text
