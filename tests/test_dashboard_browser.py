"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by selenium
with the system ``chromedriver``; nothing downloads a browser): it shows the three
peers of a loopback cluster and their links, and an image submitted through its form
comes back with the top-5 and a timeline (``modnn``: a plan that always spreads over
every peer, so that the timeline has a row per node).

Without a browser the test is skipped, saying why, except under ``CI=true`` (where
``.ci/run`` installs one), where a missing browser fails it. With
``EDGECI_SCREENSHOTS=DIR`` it saves the page's screenshots there (docs/ holds them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgeci_p2p.nn.images import sample_image_path
from tests.daemons import WAIT_S, cluster

HOST = "127.0.0.1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


def _browser() -> tuple[str, str]:
    """The system browser and its driver, or skip (fail under CI) saying what is missing."""
    missing = []
    browser = next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = next((p for d in DRIVERS if (p := shutil.which(d))), None)
    if browser is None:
        missing.append("a Chromium browser (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = "the dashboard browser test needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(why + " (CI=true: .ci/run installs them)")
        pytest.skip(why)
    assert browser is not None and driver is not None
    return browser, driver


def _drive(url: str, browser: str, driver_path: str, shots: Path | None) -> dict[str, Any]:
    """Load the page, wait for three peers and their three links, classify the sample
    image through the form; what the page showed (synchronous: runs in a thread)."""
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1500"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        # The page redraws its graph as the cluster view updates: an element found just
        # before a redraw is stale when read, and the wait looks again.
        wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
        driver.get(url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph .peer-node")) == 3)
        # Every link labelled with a measured rate (link probes run as peers connect).
        wait.until(
            lambda d: (
                len(labels := d.find_elements(By.CSS_SELECTOR, "#graph .link-label")) == 3
                and all("MB/s" in lb.text for lb in labels)
            )
        )
        seen: dict[str, Any] = wait.until(
            lambda d: {
                "peers": [
                    e.text for e in d.find_elements(By.CSS_SELECTOR, "#graph .peer-node text")
                ],
                "links": [e.text for e in d.find_elements(By.CSS_SELECTOR, "#graph .link-label")],
                "cards": len(d.find_elements(By.CSS_SELECTOR, "#cards .card")),
            }
        )
        if shots is not None:
            driver.save_screenshot(str(shots / "dashboard-cluster.png"))
        driver.find_element(By.ID, "image").send_keys(str(sample_image_path()))
        Select(driver.find_element(By.ID, "strategy")).select_by_value("modnn")
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top5 li")) == 5)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result-timeline rect.span"))
        seen["top5"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#top5 li")]
        seen["spans"] = len(driver.find_elements(By.CSS_SELECTOR, "#result-timeline rect.span"))
        seen["plan"] = driver.find_element(By.ID, "plan").text
        # The request joins the recent list; choosing it draws its timeline there too.
        # The list redraws as requests come and go: a row found just before a redraw is
        # stale when clicked, and the wait finds it again.
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#requests tr.request").click() or True
        )
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#selected-timeline rect.span"))
        seen["predicted"] = len(
            driver.find_elements(By.CSS_SELECTOR, "#selected-timeline rect.predicted")
        )
        if shots is not None:
            driver.save_screenshot(str(shots / "dashboard-request.png"))
        return seen
    finally:
        driver.quit()


@pytest.mark.asyncio
@pytest.mark.one_loop
@pytest.mark.timeout(180)
async def test_the_dashboard_shows_the_cluster_and_classifies_an_upload() -> None:
    browser, driver = _browser()
    shots = os.environ.get("EDGECI_SCREENSHOTS")
    async with cluster(3, per_peer={0: {"http": (HOST, 0), "name": "entry"}}) as daemons:
        a = daemons[0]
        assert a.http is not None
        seen = await asyncio.to_thread(
            _drive, a.http.url, browser, driver, Path(shots) if shots else None
        )
    assert sorted(seen["peers"])[0] == "entry" and len(set(seen["peers"])) == 3
    assert seen["cards"] == 3
    assert len(seen["top5"]) == 5 and all("p=" in t for t in seen["top5"])
    assert seen["spans"] > 0 and "plan for resnet34" in seen["plan"]
    recent = a.started.metrics.recent.summaries()
    assert recent and recent[0]["outcome"] == "ok" and recent[0]["traced"]
