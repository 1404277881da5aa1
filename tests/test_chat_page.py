"""The web chat page in a real headless Chromium: the model name shows, a typed message gets a reply
that streams in piece by piece, and the conversation is kept for the next turn.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` package; skips otherwise.
"""

from __future__ import annotations

import os
import shutil

import pytest

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the chat page test needs selenium (pip install selenium)"
)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
]

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not found: apt-get install -y chromium chromium-driver",
)

# Records every text length the reply bubble goes through, to tell a stream from a single final paint.
WATCH_REPLY = """
window.replyLengths = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll('.message.assistant');
  if (replies.length) window.replyLengths.push(replies[replies.length - 1].textContent.length);
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from zephyr.generation.engine import Engine
    from zephyr.serve.server import ServerThread, create_app

    with Engine.from_spec(str(tiny_model_dir), max_batch_size=4) as engine:
        with ServerThread(create_app(engine, "tiny-chat")) as s:
            yield s


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER, log_output=os.devnull), options=options
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def send(browser, text: str) -> None:
    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def finished_replies(browser) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, '.message.assistant[data-done="true"]')]


def test_chat_page_streams_a_reply_and_keeps_the_conversation(server, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda b: b.find_element(By.ID, "model-name").text == "tiny-chat")
    for field, value in (("max-tokens", "24"), ("temperature", "1")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.execute_script(WATCH_REPLY)

    send(browser, "Hello, who are you?")
    wait.until(lambda b: len(finished_replies(b)) == 1)
    user_turns = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".message.user")]
    assert user_turns == ["Hello, who are you?"]
    assert finished_replies(browser)[0].strip(), "the reply is empty"
    lengths = [n for n in browser.execute_script("return window.replyLengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the reply arrived in one piece, not streamed: {lengths}"
    assert not browser.find_elements(By.CSS_SELECTOR, ".message.error")

    send(browser, "Tell me more.")
    wait.until(lambda b: len(finished_replies(b)) == 2)
    roles = browser.execute_script("return state.messages.map(m => m.role)")
    assert roles == ["user", "assistant", "user", "assistant"]

    browser.find_element(By.ID, "reset").click()
    assert browser.execute_script("return state.messages.length") == 0
    assert not browser.find_elements(By.CSS_SELECTOR, ".message")
