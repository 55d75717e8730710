"""Headless Chromium from the OS packages (``chromium``, ``chromium-driver``), driven by Selenium.

``scripts/test-deps.sh`` installs both when missing. Nothing is downloaded: the driver and the
browser are the OS's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.programs import ROOT, program

T = TypeVar("T")

#: Where the tests leave screenshots (CI keeps the folder as an artifact).
ARTIFACTS = Path(os.environ.get("GEMMA_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def chromium(
    width: int = 1200, height: int = 800, host_rules: str | None = None
) -> webdriver.Chrome:
    """A headless Chromium that keeps the page's console messages; ``host_rules`` maps host
    names (``MAP gemma.test 127.0.0.1``)."""
    options = webdriver.ChromeOptions()
    if host_rules:
        options.add_argument(f"--host-resolver-rules={host_rules}")
    options.binary_location = program("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(program("chromedriver")))


def wait_for(
    driver: webdriver.Chrome, what: Callable[[webdriver.Chrome], T], timeout: float = 30
) -> T:
    """``what(driver)`` once it is truthy (Selenium's wait)."""
    try:
        result: T = WebDriverWait(driver, timeout, poll_frequency=0.05).until(what)
    except TimeoutException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "timeout.png"))
        page = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"the page never got there; it shows:\n{page}") from None
    return result


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's SEVERE entries since the last call (reading the log empties it)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def answers(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#messages .message.assistant")


def texts(driver: webdriver.Chrome, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]
