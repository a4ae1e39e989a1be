"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient, ipykernel), its
cells show the figures and tables they are about, and a figure it draws is the report's PNG."""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def _outputs(cell, mime: str) -> list[str]:
    return [o["data"][mime] for o in cell.get("outputs", []) if mime in o.get("data", {})]


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream") + "".join(
        _outputs(cell, "text/plain"))


def _cell(nb, start: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start))


def test_the_quickstart_notebook_runs_and_shows_its_figures_and_tables(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    # a CellExecutionError (any cell raising) fails the test with the cell's traceback
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    # every cell that draws shows one figure, as a PNG (the inline backend, not a line of text)
    for start in ("study.plot.per_position()", "books.plot.per_position(bytes=True)", "books.plot.growth()",
                  "both.plot.per_position()", "both.plot.gap()", "from mnemoscope.render.figures import figure_png"):
        cell = _cell(nb, start)
        assert len(_outputs(cell, "image/png")) == 1, start
    # the figure drawn in the notebook is the report's
    assert "same as the report's PNG: True" in _text(_cell(nb, "from mnemoscope.render.figures import figure_png"))
    # the tables: the runs of the small study, the committed study's summary, the plugin's run, the comparison
    runs = _outputs(_cell(nb, "study.runs["), "text/html")[0]
    assert "lstm" in runs and "cnn" in runs and "test_loss" in runs
    study = _outputs(_cell(nb, "study = mnemoscope.run("), "text/html")[0]
    assert "2 runs" in study
    books = _outputs(_cell(nb, 'books = mnemoscope.load('), "text/html")[0]
    assert "books-long" in books and "transformer" in books and "effective context" in books
    assert "my_rnn" in _outputs(_cell(nb, "from torch import nn"), "text/html")[0]
    both = _outputs(_cell(nb, "both = study.compare("), "text/html")[0]
    assert "my_rnn" in both and "paired with" in both
