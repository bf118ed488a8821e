"""The admin page end to end in real headless Chromium, against the stack ``plugvisor up`` runs.

Log in with up's admin token, upload a signed archive through the page's form, see the
upload job finish, reload to the new version, roll back -- asserting what the page shows
(job status, active version) and what the daemon serves (``plugvisor.client.Client``).
Chromium and chromedriver are Debian's (installed by scripts/test.sh); the test skips
loudly without them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugvisor.client import Client
from plugvisor.state.layout import StateLayout
from plugvisor.tests.support.apikit import UpStack, pack_greeter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Headless flags that keep Chromium off the network and free of first-run work.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage", "--window-size=1280,1400",
)  # fmt: skip
#: One job (upload scan, reload trial + swap) must finish within this many seconds.
JOB_TIMEOUT = 90.0

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p]
    if missing:
        pytest.skip(
            f"!!! {' and '.join(missing)} missing: the admin page's browser test did not run "
            "(scripts/test.sh installs Debian's chromium and chromium-driver) !!!"
        )
    try:
        import selenium  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("!!! selenium missing (pip install -e .[dev]): browser test did not run !!!")


@pytest.fixture
def stack() -> Iterator[UpStack]:
    _require_browser()
    # The sandbox user must traverse to the plugin code: a 0o755 dir under /tmp.
    base = Path(tempfile.mkdtemp(prefix="pv-browser-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with UpStack.start(base) as up:
            yield up
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never goes to the network for one.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _until(cond: Callable[[], Any], timeout: float, what: str, on_fail: Callable[[], str]) -> Any:
    """Poll ``cond`` until truthy; fail naming ``what`` with ``on_fail()``'s context."""
    from selenium.common.exceptions import WebDriverException  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except WebDriverException:  # a node replaced mid-read (the page re-renders)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{on_fail()}")
        time.sleep(0.1)


def test_admin_page_upload_reload_rollback(stack: UpStack, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import Select  # noqa: PLC0415

    driver = browser
    client = Client(StateLayout(stack.state_dir).daemon_socket, timeout=30)

    def context() -> str:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        text = driver.find_element(By.TAG_NAME, "body").text
        return f"--- page ({tmp_path / 'failure.png'}) ---\n{text}\n--- up ---\n{stack.log_tail()}"

    def served() -> str:
        return str(client.call("greeter", {"name": "browser"})["version"])

    def row_text(css: str) -> str:
        return str(driver.find_element(By.CSS_SELECTOR, f'tr[data-plugin="greeter"] {css}').text)

    def jobs() -> list[Any]:
        return list(driver.find_elements(By.CSS_SELECTOR, "#live .job"))

    def finished_job(count: int, kind: str) -> Any:
        """The newest live job box once there are ``count`` and it succeeded."""

        def done() -> Any:
            boxes = jobs()
            if len(boxes) < count:
                return None
            status = boxes[0].find_element(By.CSS_SELECTOR, ".job-status")
            classes = set(str(status.get_attribute("class")).split())
            if "failed" in classes:
                pytest.fail(f"{kind} job failed on the page:\n{context()}")
            return boxes[0] if "succeeded" in classes else None

        box = _until(done, JOB_TIMEOUT, f"the {kind} job to succeed", context)
        assert f"{kind} job " in box.text
        assert box.find_element(By.CSS_SELECTOR, ".job-status").text == "succeeded"
        return box

    # ---- log in with the token `up` printed -------------------------------------------------
    driver.get(f"{stack.url}/admin")
    assert driver.title == "plugvisor admin"
    driver.find_element(By.ID, "token").send_keys("pvt_not-a-token")
    driver.find_element(By.ID, "login-btn").click()
    _until(lambda: "auth.invalid" in driver.find_element(By.ID, "login-err").text, 10,
           "the login error for a wrong token", context)  # fmt: skip
    token_box = driver.find_element(By.ID, "token")
    token_box.clear()
    token_box.send_keys(stack.token)
    driver.find_element(By.ID, "login-btn").click()
    _until(lambda: driver.find_element(By.ID, "app").is_displayed(), 10, "the app view", context)
    _until(lambda: row_text(".active-version") == "1.0.0", 10, "greeter 1.0.0 active", context)
    _until(lambda: "daemon: ok" in driver.find_element(By.ID, "health").text, 10,
           "the daemon's health", context)  # fmt: skip
    assert served() == "1.0.0"

    # ---- upload a signed archive through the form -----------------------------------------
    archive = pack_greeter("1.1.0", stack.state_dir / "keys" / "demo.key", tmp_path)
    driver.find_element(By.ID, "archive").send_keys(str(archive))
    driver.find_element(By.ID, "upload").click()
    upload = finished_job(1, "upload")
    assert "greeter 1.1.0: approved" in upload.find_element(By.CSS_SELECTOR, ".job-result").text
    _until(lambda: "1.1.0" in row_text("td:nth-child(4)"), 10, "1.1.0 in greeter's versions",
           context)  # fmt: skip
    assert row_text(".active-version") == "1.0.0", "an upload does not activate"
    assert served() == "1.0.0"

    # ---- reload to the new version -----------------------------------------------------------
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-plugin="greeter"]')
    Select(row.find_element(By.CSS_SELECTOR, "select.version-choice")).select_by_value("1.1.0")
    row.find_element(By.XPATH, ".//button[text()='Reload']").click()
    reload = finished_job(2, "reload")
    assert "greeter 1.0.0 → 1.1.0 (swapped)" in reload.text
    _until(lambda: row_text(".active-version") == "1.1.0", 10, "1.1.0 active on the page", context)
    assert row_text(".previous-version") == "1.0.0"
    assert served() == "1.1.0"

    # A fresh page load (same tab: the token stays in sessionStorage) shows the same state.
    driver.refresh()
    _until(lambda: row_text(".active-version") == "1.1.0", 10, "1.1.0 after a page reload",
           context)  # fmt: skip

    # ---- roll back (default target: the previous version) ----------------------------------
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-plugin="greeter"]')
    row.find_element(By.XPATH, ".//button[text()='Rollback']").click()
    rollback = finished_job(1, "rollback")  # the page was reloaded: one live job box again
    assert "greeter 1.1.0 → 1.0.0 (swapped)" in rollback.text
    _until(lambda: row_text(".active-version") == "1.0.0", 10, "1.0.0 active again", context)
    assert served() == "1.0.0"
    # The job list shows all three, succeeded.
    _until(lambda: driver.find_element(By.ID, "jobs").text.count("succeeded") >= 3, 10,
           "three succeeded jobs in the list", context)  # fmt: skip

    # No script error, no CSP violation (the console would say so).
    errors = [
        e for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]
        and "401" not in e["message"]  # the deliberate wrong-token login
    ]  # fmt: skip
    assert not errors, errors
    shot = tmp_path / "admin-final.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    client.close()
