"""The report in a real browser: headless Chromium renders it offline, takes a screenshot, and the test fails
on console messages, images that do not decode, or empty sections. Skips (with the reason) only where no
Chromium is installed (`.ci/run` installs the Debian package `chromium`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cmedl.data.manifest import Manifest
from cmedl.data.phantom.raters import write_rater_masks
from cmedl.report import build_report

from test_report import make_cohort, write_log, write_preds  # noqa: E402 - tests/ is on sys.path under pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((p for p in (shutil.which(b) for b in BROWSERS) if p), None)


def browser_check(index: Path, screenshot: Path, height: int = 6000) -> tuple[str, str]:
    """Render ``index`` headless: (DOM after load, browser log); writes ``screenshot``."""
    browser = find_browser()
    assert browser is not None
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
              "--disable-extensions", "--virtual-time-budget=5000"]
    shot = subprocess.run([*common, f"--window-size=1280,{height}", f"--screenshot={screenshot}", index.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    dom = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    return dom.stdout, dom.stderr


def assert_page_ok(dom: str, log: str) -> None:
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:500]
    assert 'data-broken-images="0"' in body.group(0), body.group(0)  # the page's own check ran: no broken image
    n_images = int(re.search(r'data-images="(\d+)"', body.group(0)).group(1))  # type: ignore[union-attr]
    assert n_images >= 3
    for sec_id, inner in re.findall(r'<section id="([^"]+)"[^>]*>(.*?)</section>', dom, flags=re.S):
        text = re.sub(r"<h2>.*?</h2>", "", inner, flags=re.S)
        assert re.search(r"<(table|figure|p|div|ul)", text), f"section {sec_id} is empty"


@pytest.mark.slow
@pytest.mark.skipif(find_browser() is None, reason="no Chromium installed (Debian package 'chromium'; "
                    ".ci/run installs it where apt-get is available)")
def test_report_renders_in_headless_chromium(tmp_path):
    cohort = make_cohort(tmp_path / "data")
    a = write_preds(tmp_path / "a", cohort)
    b = write_preds(tmp_path / "b", cohort, shift=1)
    run = tmp_path / "run-a"
    write_log(run)
    m = Manifest.load(cohort)
    raters = write_rater_masks({c.id: m.label_path(c) for c in m.select(split="test")}, tmp_path / "raters", 2)
    res = build_report([f"a={a}", f"b={b}", f"a={run}"], tmp_path / "rep", data=cohort,
                       refs=[f"{k}={v}" for k, v in raters.items()], log=lambda _m: None)
    dom, log = browser_check(res.index, tmp_path / "shot.png")
    assert_page_ok(dom, log)
    assert "Inter-rater analysis" in dom and "Wilcoxon" in dom
