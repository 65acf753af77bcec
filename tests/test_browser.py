"""The subscribe form in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium, against the real server of test_web.

It types a broken query and sees the live check point at the problem, fixes it, subscribes,
confirms from the mail, and previews and saves a change on the manage page: the cookie, the
Origin check and the CSP hold in a browser, not only in httpx. Skipped, saying why, where
Chromium is not installed (`apt-get install -y chromium chromium-driver`).

`UPDATE_SCREENSHOTS=1 python -m pytest tests/test_browser.py` rewrites docs/subscribe.png and
docs/manage.png, the screenshots in the README.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from test_web import make_site, site  # noqa: F401  (fixtures: the real server)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium, started with the flags this sandboxed, offline machine needs."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(
            "headless Chromium is not installed: apt-get install -y chromium chromium-driver "
            f"(looked for {CHROMIUM} and {CHROMEDRIVER})"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # no network here: Chromium's own calls would hang
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=820,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 20):
    """Wait until `condition(driver)` holds; an element of the page being left counts as "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(condition)


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """The whole page as PNG: into docs/ when UPDATE_SCREENSHOTS=1, else into tmp_path."""
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(820, min(height + chrome, 4000))
    folder = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path))
    driver.set_window_size(820, 1000)
    return path


def test_a_visitor_subscribes_confirms_and_tunes_a_watch_in_chromium(site, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(site.url + "/")
    assert browser.title == "Subscribe · paperbot"
    browser.find_element(By.ID, "email").send_keys("dana@example.org")

    query = browser.find_element(By.ID, "query")
    check = browser.find_element(By.ID, "query-check")
    query.send_keys("(sparse attention")
    wait_for(browser, lambda _: "never closed" in check.text)
    assert query.get_attribute("aria-invalid") == "true"
    assert check.text.splitlines()[-1] == "^"  # the caret under the problem
    query.send_keys(Keys.END, ") OR agent*")
    wait_for(browser, lambda _: check.text.startswith("✓ Understood as"))
    assert query.get_attribute("aria-invalid") is None

    browser.find_element(By.CSS_SELECTOR, 'input[name="frequency"][value="weekly"]').click()
    Select(browser.find_element(By.ID, "day")).select_by_value("friday")
    browser.execute_script("arguments[0].value = '07:30'", browser.find_element(By.ID, "time"))
    zone = browser.find_element(By.ID, "timezone")
    zone.clear()
    zone.send_keys("Europe/Berlin")
    screenshot(browser, "subscribe.png", tmp_path)

    browser.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Check your inbox")
    assert list(site.folder.glob("*.toml")) == []

    [mail] = site.mails()
    confirm_url = re.search(r"http://127\.0\.0\.1:\d+/confirm/\S+", mail.get_content()).group(0)
    browser.get(confirm_url)
    browser.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "You are subscribed")
    [path] = site.folder.glob("dana-*.toml")
    assert 'schedule = "weekly friday 07:30"' in path.read_text()

    browser.find_element(By.LINK_TEXT, "Manage your subscription").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Your subscription")
    assert "papers/2606.13392" in browser.page_source  # the 30-day preview of the watch
    screenshot(browser, "manage.png", tmp_path)

    form = browser.find_element(By.ID, "watch-0")
    field = form.find_element(By.NAME, "query")
    field.clear()
    field.send_keys("sparse attention")
    form.find_element(By.CSS_SELECTOR, 'button[value="preview"]').click()
    wait_for(browser, lambda d: "not saved yet" in d.page_source)
    browser.find_element(By.ID, "watch-0").find_element(By.CSS_SELECTOR, 'button[value="save"]').click()
    wait_for(browser, lambda d: "Your watch is saved." in d.page_source)
    assert 'query = "sparse attention"' in path.read_text()
    assert len(site.mails()) == 1
