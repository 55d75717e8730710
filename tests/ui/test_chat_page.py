"""The chat page in a real browser (the OS's headless Chromium) against a live worker on the
real model."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.conftest import RunningWorker, make_settings, start_worker
from tests.programs import Nginx
from tests.ui.browser import ARTIFACTS, answers, chromium, console_errors, texts, wait_for

KEY = "ui-test-key-0123456789abcdef"

#: Records every text the last answer shows while it streams (before its timings appear).
RECORD_STEPS = """
window.__steps = [];
const log = document.getElementById("messages");
new MutationObserver(() => {
  const all = log.querySelectorAll(".message.assistant");
  const last = all[all.length - 1];
  if (!last || last.querySelector(".meta").classList.contains("timings")) return;
  const text = last.querySelector(".body").textContent;
  const steps = window.__steps;
  if (text && steps[steps.length - 1] !== text) steps.push(text);
}).observe(log, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def page_worker() -> Iterator[RunningWorker]:
    w = start_worker(make_settings(parallel=2))
    yield w
    w.stop()


@pytest.fixture
def browser(page_worker: RunningWorker) -> Iterator[webdriver.Chrome]:
    driver = chromium()
    try:
        driver.get(page_worker.http + "/")  # a browser asks for text/html: sent to /ui/
        wait_for(driver, lambda d: d.find_element(By.ID, "connection").text == "connected")
        yield driver
        assert console_errors(driver) == []
    finally:
        driver.quit()


def send(driver: webdriver.Chrome, text: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def set_field(driver: webdriver.Chrome, field: str, value: str) -> None:
    """Type ``value`` into a settings field (the settings fold opens first)."""
    fold = driver.find_element(By.CSS_SELECTOR, "details.settings")
    if fold.get_attribute("open") is None:
        fold.find_element(By.TAG_NAME, "summary").click()
    box = driver.find_element(By.ID, field)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE, value)
    assert box.get_attribute("value") == value


def wait_answer(driver: webdriver.Chrome, count: int, timeout: float = 60) -> str:
    """The meta line of answer number ``count`` once it has ended (timings or an error)."""

    def ended(d: webdriver.Chrome) -> str | None:
        found = answers(d)
        if len(found) < count:
            return None
        meta = found[count - 1].find_element(By.CSS_SELECTOR, ".meta")
        classes = (meta.get_attribute("class") or "") + (
            found[count - 1].get_attribute("class") or ""
        )
        return meta.text if "timings" in classes or "failed" in classes else None

    return wait_for(driver, ended, timeout)


def test_the_answer_streams_in_and_shows_its_timings(browser: webdriver.Chrome) -> None:
    assert browser.current_url.endswith("/ui/")
    browser.execute_script(RECORD_STEPS)
    send(browser, "Write a short story about a lighthouse keeper.")
    meta = wait_answer(browser, 1)
    steps: list[str] = browser.execute_script("return window.__steps")
    final = answers(browser)[0].find_element(By.CSS_SELECTOR, ".body").text
    assert len(steps) >= 3, steps
    assert all(final.startswith(s.strip()[:20]) for s in steps)  # it grew; it never changed course
    assert "first token" in meta and "tokens/s" in meta and "generated tokens" in meta
    assert browser.find_element(By.ID, "stop").get_attribute("disabled") == "true"
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter((e) => e.labels.length === 0).map((e) => e.id)"
    )
    assert unlabelled == []
    assert browser.find_element(By.ID, "messages").get_attribute("aria-live") == "polite"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "chat-answer.png"))


def test_stop_and_escape_cancel_and_the_next_prompt_works(browser: webdriver.Chrome) -> None:
    set_field(browser, "max-tokens", "600")
    browser.find_element(By.ID, "wrap").click()  # a plain completion that goes on and on
    for n, how in enumerate(("button", "escape"), start=1):
        send(browser, "Count: 1, 2, 3, 4, 5, 6,")
        wait_for(
            browser, lambda d, n=n: len(answers(d)) >= n and answers(d)[n - 1].text.count(",") >= 4
        )
        if how == "button":
            browser.find_element(By.ID, "stop").click()
        else:
            browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        meta = wait_answer(browser, n)
        assert "cancelled" in meta
        assert "cancelled" in (answers(browser)[n - 1].get_attribute("class") or "")
    browser.find_element(By.ID, "new-session").click()
    browser.find_element(By.ID, "wrap").click()
    send(browser, "What is the capital of France?")
    meta = wait_answer(browser, 1)
    assert "Paris" in answers(browser)[0].text
    assert "cancelled" not in meta


def test_a_reload_keeps_the_session_and_the_sidebar_opens_older_ones(
    browser: webdriver.Chrome, page_worker: RunningWorker
) -> None:
    send(browser, "What is the capital of France?")
    wait_answer(browser, 1)
    send(browser, "What is the capital of Italy?")
    wait_answer(browser, 2)
    first = browser.execute_script("return localStorage.getItem('gemma-worker.session')")
    assert first
    stored = httpx.get(f"{page_worker.http}/v1/sessions/{first}", timeout=10).json()
    assert len(stored["history"]) == 2

    browser.refresh()
    wait_for(browser, lambda d: len(answers(d)) == 2)
    users = texts(browser, "#messages .message.user .body")
    assert users == ["What is the capital of France?", "What is the capital of Italy?"]
    assert "Paris" in answers(browser)[0].text

    browser.find_element(By.ID, "new-session").click()
    assert answers(browser) == []
    send(browser, "What is the capital of Spain?")
    wait_answer(browser, 1)
    second = browser.execute_script("return localStorage.getItem('gemma-worker.session')")
    assert second and second != first

    older = wait_for(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f'#sessions button.open[data-id="{first}"]'),
    )
    older.click()
    wait_for(browser, lambda d: len(answers(d)) == 2)
    assert texts(browser, "#messages .message.user .body")[1] == "What is the capital of Italy?"
    # The conversation goes on in the session that was opened.
    send(browser, "What is the capital of Germany?")
    wait_answer(browser, 3)
    stored = httpx.get(f"{page_worker.http}/v1/sessions/{first}", timeout=10).json()
    assert len(stored["history"]) == 3

    delete = browser.find_element(
        By.CSS_SELECTOR, f'#sessions li:has(button.open[data-id="{second}"]) .delete'
    )
    delete.click()
    wait_for(
        browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'button.open[data-id="{second}"]')
    )
    assert httpx.get(f"{page_worker.http}/v1/sessions/{second}", timeout=10).status_code == 404


PAYLOAD = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def test_markup_in_input_and_output_stays_text(browser: webdriver.Chrome) -> None:
    box = browser.find_element(By.ID, "prompt")
    box.send_keys("Repeat this: " + PAYLOAD)
    box.send_keys(Keys.SHIFT, Keys.ENTER)  # a new line, not a send
    box.send_keys("and this: <b>bold</b>")
    assert answers(browser) == []
    box.send_keys(Keys.ENTER)
    wait_answer(browser, 1)
    # The output is forced through the page's JSON-schema box: the only value it allows.
    schema = {"type": "object", "properties": {"html": {"enum": [PAYLOAD]}}, "required": ["html"]}
    set_field(browser, "schema", json.dumps(schema))
    send(browser, "Give me the markup.")
    wait_answer(browser, 2)
    for _ in range(2):  # as streamed, then as stored history after a reload
        user = texts(browser, "#messages .message.user .body")[0]
        assert PAYLOAD in user and "<b>bold</b>" in user and "\n" in user
        assert (
            PAYLOAD
            in json.loads(answers(browser)[1].find_element(By.CSS_SELECTOR, ".body").text)["html"]
        )
        assert (
            browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages script, #messages b")
            == []
        )
        rendered = browser.execute_script(
            "const d = document.createElement('div');"
            "GemmaMarkdown.render('a `b` **c** ' + '`'.repeat(5000) + ' d', d);"
            "return [d.querySelectorAll('code').length, d.querySelectorAll('strong').length];"
        )
        assert rendered == [1, 1]  # and a long run of backticks renders (no runaway regex)
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no dialog is open
        browser.refresh()
        wait_for(browser, lambda d: len(answers(d)) == 2)


def test_with_keys_the_page_asks_for_one_and_says_when_it_is_wrong() -> None:
    keyed = start_worker(
        make_settings(
            parallel=1, api_keys=[KEY], ws_idle_timeout_seconds=3.0, rate_limit_requests="3/minute"
        )
    )
    driver = chromium()
    try:
        driver.get(keyed.http + "/")
        panel = wait_for(
            driver,
            lambda d: (
                d.find_element(By.ID, "key-panel").is_displayed()
                and d.find_element(By.ID, "key-panel")
            ),
        )
        assert "needs an API key" in panel.text
        driver.find_element(By.ID, "key-input").send_keys("wrong-key-0123456789abcdef", Keys.ENTER)
        wait_for(driver, lambda d: "refused" in d.find_element(By.ID, "key-message").text)
        assert driver.find_element(By.ID, "key-panel").is_displayed()

        driver.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
        wait_for(driver, lambda d: d.find_element(By.ID, "connection").text == "connected")
        assert not driver.find_element(By.ID, "key-panel").is_displayed()
        send(driver, "What is the capital of France?")
        wait_answer(driver, 1)
        assert "Paris" in answers(driver)[0].text
        # The worker drops the idle socket (3 s): the page says so and reconnects.
        wait_for(driver, lambda d: "Reconnected" in d.find_element(By.ID, "alert").text, timeout=20)
        send(driver, "What is the capital of Italy?")
        wait_answer(driver, 2)
        assert "Rome" in answers(driver)[1].text
        # Over the rate limit: the answer says so, and when to retry.
        send(driver, "What is the capital of Spain?")
        wait_answer(driver, 3)
        send(driver, "What is the capital of Germany?")
        meta = wait_answer(driver, 4)
        assert "RATE_LIMITED" in meta and "retry in" in meta
        # Only the refused key's 401 answers may show in the console.
        errors = [e for e in console_errors(driver) if "401" not in e["message"]]
        assert errors == []
    finally:
        driver.quit()
        keyed.stop()


def test_behind_nginx_under_a_sub_path_on_another_host_name(tmp_path: Path) -> None:
    """The shipped nginx site under /gemma/, reached as http://gemma.test:<port>, the worker
    told to serve that name (GEMMA_ALLOWED_HOSTS, as docs/DEPLOY.md says): every URL of the
    page is relative, and its WebSocket's origin is trusted for its host (not loopback)."""
    worker = start_worker(make_settings(parallel=1, allowed_hosts=["gemma.test"]), wait_ready=False)
    nginx = Nginx.start(tmp_path, [worker.settings.port], sub_path="/gemma/")
    driver = chromium(host_rules="MAP gemma.test 127.0.0.1")
    try:
        wait_ready_as(f"http://127.0.0.1:{nginx.port}/gemma/ready", "gemma.test")
        driver.get(f"http://gemma.test:{nginx.port}/gemma/")
        wait_for(driver, lambda d: d.find_element(By.ID, "connection").text == "connected")
        assert driver.current_url == f"http://gemma.test:{nginx.port}/gemma/ui/"
        send(driver, "What is the capital of France?")
        wait_answer(driver, 1)
        assert "Paris" in answers(driver)[0].text
        session = driver.execute_script("return localStorage.getItem('gemma-worker.session')")
        wait_for(
            driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'button.open[data-id="{session}"]')
        )
        assert console_errors(driver) == []
        # The same page on a name the worker was not told to serve: refused.
        driver.get(f"http://127.0.0.1:{nginx.port}/gemma/ui/")
        assert "HOST_NOT_ALLOWED" in driver.page_source
    finally:
        driver.quit()
        nginx.stop()
        worker.stop()


def wait_ready_as(url: str, host: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(url, headers={"Host": host}, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.1)


def test_the_model_picker_and_session_titles(tmp_path: Path, second_model: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    os.link(second_model, folder / "gemma-q8.gguf")
    worker = start_worker(make_settings(models_dir=folder, parallel=2))
    driver = chromium()
    try:
        driver.get(worker.http + "/ui/")
        wait_for(driver, lambda d: d.find_element(By.ID, "connection").text == "connected")
        picker = Select(driver.find_element(By.ID, "model-picker"))
        wait_for(driver, lambda d: len(picker.options) == 2)
        labels = [o.text for o in picker.options]
        assert labels == ["gemma-3-270m-q4_k_m · loaded", "gemma-q8 · not loaded"]
        assert picker.first_selected_option.get_attribute("value") == "gemma-3-270m-q4_k_m"
        picker.select_by_value("gemma-q8")
        send(driver, "What is the capital of France?")
        meta = wait_answer(driver, 1)
        assert meta.startswith("gemma-q8 · first token"), meta
        wait_for(driver, lambda d: "gemma-q8 · loaded" in [o.text for o in picker.options])
        assert driver.find_element(By.ID, "model-picker").get_attribute("disabled") == "true"
        title = wait_for(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, "#sessions button.open .title")
        )
        assert title.text == "What is the capital of France?"
        driver.find_element(By.ID, "new-session").click()
        assert driver.find_element(By.ID, "model-picker").get_attribute("disabled") is None
        picker.select_by_value("gemma-3-270m-q4_k_m")
        send(driver, "What is the capital of Italy?")
        assert wait_answer(driver, 1).startswith("gemma-3-270m-q4_k_m · ")
        sessions = httpx.get(f"{worker.http}/v1/sessions", timeout=10).json()["sessions"]
        assert sorted(s["model"] for s in sessions) == ["gemma-3-270m-q4_k_m", "gemma-q8"]
        assert console_errors(driver) == []
    finally:
        driver.quit()
        worker.stop()
