"""What the browser scripts (cors_browser.py, web_browser.py, plots_browser.py) share: step
lines, checks, and a headless chromium driven through a given chromedriver
(so Selenium never downloads one). They import it from this directory.
"""

import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def step(msg):
    print("step:", msg, flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def headless_chromium(chromium, chromedriver, window="1280,1200"):
    """A headless chromium with a fresh profile and its console log kept."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=" + window,
        "--user-data-dir=" + tempfile.mkdtemp(prefix="speedrelay-chromium-"),
    ]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
