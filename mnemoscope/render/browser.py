"""A page as a browser shows it, in headless Chromium (Debian's ``chromium`` package): the check
the tests run on the study report and the comparison page (every image decodes, no section is
empty), and the screenshots of a report's first screen in ``results/*/README.md``::

    python -m mnemoscope.render.browser results/reference/report.html results/reference/report-screen.png

Nothing here is needed to run a study; without Chromium, :func:`find_chromium` returns None.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image  # Pillow: a dependency of matplotlib

from ..errors import UserError

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# appended to a copy of the page: once everything has loaded, write what a reader would meet into
# the page itself, where --dump-dom prints it
CHECK_SCRIPT = """<script>window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
    width: i.naturalWidth, height: i.naturalHeight}));
  const sections = [];
  for (const h of document.querySelectorAll("h2")) {
    let n = h.nextElementSibling, text = "", media = 0;
    for (; n && !/^H[12]$/.test(n.tagName); n = n.nextElementSibling) {
      if (n.tagName === "SCRIPT") continue;
      text += n.textContent.trim(); media += n.querySelectorAll("img,table").length + (/^(IMG|TABLE)$/.test(n.tagName) ? 1 : 0);
    }
    sections.push({title: h.textContent.trim(), text: text.length, media: media});
  }
  const out = document.createElement("pre");
  out.id = "mnemoscope-check";
  const first = Array.from(document.body.children).filter(e => e.tagName === "H2").map(e => e.textContent.trim());
  out.textContent = JSON.stringify({title: document.title, images: images, sections: sections,
    page_width: document.documentElement.scrollWidth, window_width: window.innerWidth, order: first});
  document.body.appendChild(out);
});</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise UserError("no Chromium found: install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="mnemoscope-chromium-") as profile:
        flags = ["--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                 "--allow-file-access-from-files", "--virtual-time-budget=10000"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=timeout)


def check_page(page: Path, timeout: float = 120, width: int = 1400) -> dict:
    """Load ``page`` (a copy, with a checking script added) in headless Chromium, ``width`` CSS
    pixels wide. Returns ``{"title", "images": [{"alt", "ok", "width", "height"}], "sections":
    [{"title", "text", "media"}], "broken": [alt of each image that did not decode], "empty": [title
    of each h2 section with neither text nor an image or table], "page_width", "window_width"
    (a page wider than its window runs off the right edge), "order": [h2 titles in order]}``."""
    page = Path(page)
    text = page.read_text()
    with tempfile.TemporaryDirectory(prefix="mnemoscope-page-") as tmp:
        copy = Path(tmp) / page.name  # the pages are self-contained: their images travel with them
        copy.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>") if "</body>" in text else text + CHECK_SCRIPT)
        done = _run([f"--window-size={width},900", "--dump-dom", copy.as_uri()], timeout)
    m = re.search(r'<pre id="mnemoscope-check">(.*?)</pre>', done.stdout, re.S)
    if not m:
        raise RuntimeError(f"Chromium did not report on {page} (exit {done.returncode}): {done.stderr[-500:]}")
    result = json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&"))
    result["broken"] = [i["alt"] for i in result["images"] if not i["ok"]]
    result["empty"] = [s["title"] for s in result["sections"] if not s["text"] and not s["media"]]
    return result


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900, colors: int = 128,
               timeout: float = 120) -> Path:
    """The first screen (``width`` x ``height`` CSS pixels) of ``page`` as a PNG, reduced to
    ``colors`` colours so that it stays small enough to commit."""
    page, png = Path(page), Path(png)
    with tempfile.TemporaryDirectory(prefix="mnemoscope-shot-") as tmp:
        raw = Path(tmp) / "screen.png"
        done = _run([f"--window-size={width},{height}", f"--screenshot={raw}", page.resolve().as_uri()], timeout)
        if not raw.exists():
            raise RuntimeError(f"Chromium took no screenshot of {page} (exit {done.returncode}): {done.stderr[-500:]}")
        with Image.open(raw) as im:
            im.convert("RGB").quantize(colors=colors).save(png, optimize=True)
    return png


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m mnemoscope.render.browser PAGE.html SCREEN.png")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
