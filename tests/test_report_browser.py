"""The leaderboard page in Debian's real headless chromium: the DOM it builds and a screenshot."""

import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from influence_bench.report import write_report
from test_report import FIGURES, TUNED_LDS, make_results_dir

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


class RankingAndImages(HTMLParser):
    """Collects the body rows of table#ranking (their cells' text) and the src of every img."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[dict[str, str]] = []
        self.in_ranking = self.in_body = self.in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "ranking":
            self.in_ranking = True
        elif tag == "tbody" and self.in_ranking:
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append([])
        elif tag == "td" and self.in_body:
            self.in_cell = True
            self.rows[-1].append("")
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "td":
            self.in_cell = False
        elif tag == "tbody":
            self.in_body = False
        elif tag == "table":
            self.in_ranking = False

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1] += data


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install it with `apt-get install chromium`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    return write_report(make_results_dir(base), base / "reports")["html"]


def run_chromium(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir()
    return subprocess.run([str(chromium), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def test_chromium_builds_the_ranking_table_and_the_figures(chromium, page, tmp_path):
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    parsed = RankingAndImages()
    parsed.feed(dom)
    assert [cells[1] for cells in parsed.rows] == list(TUNED_LDS)
    figures = [i for i in parsed.images if i.get("src", "").startswith("data:image/png;base64,")]
    assert len(figures) == len(parsed.images) == len(FIGURES)
    assert all(i.get("class") == "figure" and i.get("alt") for i in figures)


def test_chromium_screenshot_is_not_blank(chromium, page, tmp_path):
    shot = tmp_path / "page.png"
    run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 2400)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 200  # text, tables and plots, not blank
