"""The study report and the comparison page as a reader meets them: rendered in headless Chromium
(Debian's ``chromium``; .ci/run installs it), every image decodes and no section is empty."""
import shutil
from pathlib import Path

import pytest

from mnemoscope.render.browser import check_page, find_chromium
from mnemoscope.cli import main

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "reference-tiny"
COMMITTED = sorted(REPO.glob("results/*/report.html"))

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")


def _assert_readable(page: Path, min_images: int) -> dict:
    seen = check_page(page, width=1400)
    assert not seen["broken"], f"{page}: images that do not decode: {seen['broken']}"
    assert not seen["empty"], f"{page}: empty sections: {seen['empty']}"
    assert len(seen["images"]) >= min_images and all(i["width"] > 100 for i in seen["images"])
    # at 1400 px nothing runs off the right edge
    assert seen["page_width"] <= seen["window_width"], f"{page}: {seen['page_width']} px wide in a 1400 px window"
    return seen


def test_report_and_compare_page_render(tmp_path):
    study = tmp_path / "study"
    shutil.copytree(FIXTURE, study)
    assert main(["report", str(study)]) == 0
    seen = _assert_readable(study / "report.html", 2)  # the per-position curves and the gaps beside them
    assert seen["order"][:2] == ["Findings", "Per-position loss"]  # what the study found, first
    assert seen["order"][-2:] == ["Configuration", "Environment"]
    assert main(["compare", f"{FIXTURE}:lstm", str(study), "--out", str(tmp_path / "c")]) == 0
    seen = _assert_readable(tmp_path / "c" / "compare.html", 2)
    assert seen["order"][0] == "Findings"
    assert {"Paired gaps by position band", "Runs, and how each pairs"} <= {s["title"] for s in seen["sections"]}


@pytest.mark.parametrize("page", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_reports_render(page):
    seen = _assert_readable(page, 1)
    assert seen["order"][0] == "Findings"


def test_the_check_sees_a_broken_image_and_an_empty_section(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><body><h1>x</h1><h2>Figure</h2><img alt="lost" src="data:image/png;base64,AAAA">'
                    '<h2>Nothing here</h2><p> </p><h2>Text</h2><p>fine</p></body></html>')
    seen = check_page(page)
    assert seen["broken"] == ["lost"] and seen["empty"] == ["Nothing here"]
