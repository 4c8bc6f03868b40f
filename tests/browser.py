"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium.

Nothing is downloaded: the driver is /usr/bin/chromedriver (scripts/install-browser.sh).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.stack import wait_for

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
DESKTOP = (1280, 800)
PHONE = (390, 844)


@contextlib.contextmanager
def chromium(tmp: Path) -> Iterator[WebDriver]:
    """A headless Chromium whose profile, crash dumps and driver log live under `tmp`."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is missing: run scripts/install-browser.sh")
    crashes = tmp / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    os.environ["BREAKPAD_DUMP_LOCATION"] = str(crashes)  # inherited by chromedriver/chromium
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={tmp / 'profile'}", f"--crash-dumps-dir={crashes}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_page_load_timeout(30)
        size(driver, DESKTOP)
        yield driver
    finally:
        driver.quit()


def size(driver: WebDriver, wh: tuple[int, int]) -> None:
    """The exact CSS viewport (not the window): what a 1280x800 screen or a phone shows."""
    width, height = wh
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600,
    })


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """Console messages of level SEVERE since the last call (errors, failed loads)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver: WebDriver, path: Path) -> Path:
    """The whole page (not only the viewport) as a PNG, at the emulated width."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    content = metrics["cssContentSize"]
    data = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": content["width"], "height": content["height"],
                 "scale": 1},
    })
    import base64

    path.write_bytes(base64.b64decode(data["data"]))
    return path


def text_of(driver: WebDriver, css: str) -> str:
    """The rendered text of the first element matching `css` ("" when there is none), read
    in one step in the page (the page re-renders cells: an element handle may go stale)."""
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : ''",
        css))


def wait_text(driver: WebDriver, css: str, want: str, timeout: float = 20.0) -> str:
    """Poll until the element's text contains `want`; returns that text."""
    return str(wait_for(lambda: want in (t := text_of(driver, css)) and t, timeout,
                        f"{css} to show {want!r} (shows {text_of(driver, css)!r})"))
