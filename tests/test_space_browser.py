"""The Gradio Space in a real browser: Debian's chromium, headless, driven by selenium through the system chromedriver.

``python spaces/app.py`` is started as a user would start it (its default bind address, a free port), the page is
opened, an episode is run and its rendered turns are checked; then a game is played from the "Play yourself" tab and
two checkpoints are compared on the same test tasks.
A screenshot of the episode goes to the test's tmp dir, and to ``spaces/screenshots/demo.png`` (the README shows it)
when ``TRL_EMPG_UPDATE_SCREENSHOT=1`` is set, so that a test run never edits tracked files.
Skipped only when the chromium or chromedriver binaries are absent (CI installs them where it can).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO_ROOT / "spaces" / "screenshots" / "demo.png"
CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
CHROMEDRIVER = shutil.which("chromedriver")
# Offline and quiet: no background requests, updates, sync or first-run UI.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1900",
)
# Confidence 1 - Hn over the episode's steps; "n/a" while fewer than two different step entropies are known.
ENTROPY_TEXT = re.compile(r"H = \d+\.\d{3} · conf (\d\.\d{2}|n/a)")
FINISHED = ("Won in", "Lost after", "Not solved", "Error:")
# A held-out task the shipped EMPG agent (the menu's default) wins in several turns with the page's sampling seed.
SEED = "20030"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"spaces/app.py exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"spaces/app.py did not serve {url} within {timeout:.0f}s")


@pytest.fixture
def app_url(tmp_path):
    """``python spaces/app.py --port P`` in the background, with its own agent cache; yields the page's URL."""
    port = _free_port()
    env = {
        **os.environ,
        "TRL_EMPG_SPACE_CACHE": str(tmp_path / "space-cache"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("GRADIO_SERVER_NAME", None)  # the app's own default (127.0.0.1) is part of what runs here
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "spaces" / "app.py"), "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, timeout=180)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "needs the chromium and chromedriver binaries (Debian: apt-get install chromium chromium-driver); "
            f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text_of(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return elements[0].text if elements else ""


@pytest.mark.slow
def test_browser_runs_an_episode_and_plays(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url)
    wait = WebDriverWait(browser, 300, poll_frequency=0.5)
    # The page loads the environment's seeds on load; wait for them so the run plays the chosen task.
    wait.until(lambda driver: "held-out test tasks" in _text_of(driver, "#env-note"))
    # Type a task seed into the seed box (one whose episodes take several turns), as a person would.
    seed_box = browser.find_element(By.CSS_SELECTOR, "input[aria-label^='Task seed']")
    seed_box.click()
    seed_box.send_keys(Keys.CONTROL, "a")
    seed_box.send_keys(SEED, Keys.ENTER)
    browser.find_element(By.CSS_SELECTOR, "h1").click()
    wait.until(lambda driver: seed_box.get_attribute("value") == SEED)
    wait.until(conditions.element_to_be_clickable((By.CSS_SELECTOR, "#run-episode"))).click()

    status = wait.until(
        lambda driver: (text := _text_of(driver, "#episode-status")) and text.startswith(FINISHED) and text
    )
    assert not status.startswith("Error:"), status
    updating = os.environ.get("TRL_EMPG_UPDATE_SCREENSHOT") == "1"
    assert status.startswith("Won in") or not updating, f"the README's screenshot must show a win: {status}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#episode-turns tr.turn-row")
    assert rows, "no turn rows rendered"
    rendered = [
        (row.find_element(By.CSS_SELECTOR, "td.action").text, row.find_element(By.CSS_SELECTOR, "td.entropy").text)
        for row in rows
    ]
    assert any(
        row.find_elements(By.CSS_SELECTOR, "td.action code") and ENTROPY_TEXT.fullmatch(entropy)
        for row, (_, entropy) in zip(rows, rendered)
    ), rendered
    # The entropy chips are coloured by confidence relative to the episode's steps (the page says so): with steps of
    # different entropies, its least certain step reads 0.00 and its most certain 1.00, on different colours.
    assert "relative to this episode's steps: 0 = its least certain step" in _text_of(browser, "#episode-turns")
    chips = [row.find_element(By.CSS_SELECTOR, ".entropy-chip") for row in rows]
    colors = {chip.value_of_css_property("background-color") for chip in chips}
    assert not colors & {"", "rgba(0, 0, 0, 0)"}, colors
    if len({entropy.split(" · ")[0] for _, entropy in rendered}) > 1:
        shown = [entropy.rsplit(" ", 1)[-1] for _, entropy in rendered]
        assert "0.00" in shown and "1.00" in shown and len(colors) > 1, rendered
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#entropy-plot img"))

    browser.execute_script("window.scrollTo(0, 0)")
    targets = [tmp_path / "demo.png"] + ([SCREENSHOT] if updating else [])
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(path)), f"could not save {path}"
        assert path.stat().st_size > 10_000

    # Play yourself: start a game, click an admissible action, see the move and the agent's suggestion.
    browser.find_element(By.XPATH, "//button[@role='tab'][normalize-space()='Play yourself']").click()
    wait.until(conditions.element_to_be_clickable((By.CSS_SELECTOR, "#start-game"))).click()
    wait.until(lambda driver: "Agent's suggestion" in _text_of(driver, "#suggestion"))
    choice = wait.until(conditions.element_to_be_clickable((By.CSS_SELECTOR, "input[type='radio']")))
    action = choice.get_attribute("value")
    choice.click()
    move = wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "tr.play-row"))[0]
    assert action in move.find_element(By.CSS_SELECTOR, "td.action").text
    assert ENTROPY_TEXT.fullmatch(move.find_element(By.CSS_SELECTOR, "td.entropy").text)
    assert "move 2" in _text_of(browser, "#play-status")

    # Compare: both checkpoints play the same first test tasks; a summary line per agent and a per-task table.
    browser.find_element(By.XPATH, "//button[@role='tab'][normalize-space()='Compare checkpoints']").click()
    wait.until(conditions.element_to_be_clickable((By.CSS_SELECTOR, "#compare"))).click()
    summary = wait.until(
        lambda driver: (text := _text_of(driver, "#compare-summary")) and re.search("success|Error", text) and text
    )
    assert not summary.startswith("Error:"), summary
    assert summary.count("success") == 2, summary
    assert browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr"), "no per-task rows"
