"""The chat page at ``/`` in a real headless browser (Debian's chromium + chromedriver, driven by
selenium): a message streams its answer in, a wrong API key shows an error. Skipped when no
browser is installed, except in CI (``CI=true``), where it must run."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

pytest.importorskip("fastapi")

from gptcourse.serve import background, create_app  # noqa: E402

TIMEOUT = 20  # seconds for the page to show something (it takes well under one)


def _browser() -> tuple[str, str] | str:
    """``(chromium, chromedriver)`` paths, or why they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        return "no chromium/chromedriver (apt-get install chromium chromium-driver)"
    return chrome, driver


@pytest.fixture(scope="module")
def driver():
    found = _browser()
    if isinstance(found, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {found}")
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,720", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(found[1]), options=options)  # no download: paths given
    yield d
    d.quit()


def _wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.02).until(lambda d: condition(), message)


def _send(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def _set(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def test_a_message_streams_its_answer_into_the_page(driver, model, tokenizer):
    import httpx
    from selenium.webdriver.common.by import By

    app = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=32)
    released, calls = threading.Event(), [0]
    forward = model.forward

    def held_forward(*a, **k):  # after a few tokens, generation waits until the test looks
        calls[0] += 1
        if calls[0] == 5:
            released.wait(TIMEOUT)
        return forward(*a, **k)

    with background(app) as url:
        driver.get(url + "/")
        _wait(driver, lambda: driver.find_element(By.ID, "model").text == "tiny", "no /health")
        assert not driver.find_element(By.ID, "api-key").is_displayed()  # no key on this server
        _set(driver, "temperature", "0")
        _set(driver, "max-tokens", "12")
        _set(driver, "system", "Answer briefly.")
        model.forward = held_forward
        try:
            _send(driver, "Say <b>hi</b>")
            bubble = _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"), "no answer")[0]
            # the first tokens are on the page while the answer is still being generated
            partial = _wait(driver, lambda: bubble.get_attribute("textContent"), "nothing streamed")
            assert "streaming" in bubble.get_attribute("class")
        finally:
            released.set()
            del model.forward
        _wait(driver, lambda: "streaming" not in bubble.get_attribute("class"), "the stream did not end")
        user = driver.find_element(By.CSS_SELECTOR, ".msg.user")
        assert user.text == "Say <b>hi</b>" and not user.find_elements(By.TAG_NAME, "b")  # text, not HTML
        msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say <b>hi</b>"}]
        want = httpx.post(url + "/v1/chat/completions", timeout=10, json={
            "messages": msgs, "temperature": 0, "max_tokens": 12}).json()["choices"][0]["message"]["content"]
        assert bubble.get_attribute("textContent") == want and want.startswith(partial)
        driver.find_element(By.ID, "clear").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []


def test_a_wrong_api_key_shows_an_error(driver, model, tokenizer):
    from selenium.webdriver.common.by import By

    app = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=8, api_key="s3cret")
    with background(app) as url:
        driver.get(url + "/")
        key = driver.find_element(By.ID, "api-key")
        _wait(driver, key.is_displayed, "the key field is hidden on a server that needs a key")
        key.send_keys("wrong")
        _send(driver, "Hello")
        error = _wait(driver, lambda: driver.find_element(By.ID, "error").text, "no error shown")
        assert "401" in error and "API key" in error
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []  # the failed turn is gone
        assert driver.find_element(By.ID, "prompt").get_attribute("value") == "Hello"  # ready to retry
        key.clear()
        key.send_keys("s3cret")
        driver.find_element(By.ID, "send").click()
        _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.streaming)"),
              "no answer with the right key")
        assert driver.find_element(By.ID, "error").text == ""
