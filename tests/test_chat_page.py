"""The web chat page in a real headless Chromium: the model name shows, a typed message gets a reply
that streams in piece by piece, and the conversation is kept for the next turn; in compare mode, two
blind replies get a vote, the conversation goes on with the chosen one, and the votes file holds exactly
the votes cast, through a reload.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` package; skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from support.models import save_tiny_checkpoint

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


# ---- compare mode ---------------------------------------------------------------------------------------

COMPARED = ("tiny-red", "tiny-blue")


@pytest.fixture(scope="module")
def compare_server(tiny_model_dir, tokenizer_dir, tmp_path_factory):
    """A server comparing two tiny models; yields it and its votes file."""
    from zephyr.generation.engine import Engine
    from zephyr.serve.compare import Arena, Contender
    from zephyr.serve.server import ServerThread, create_app

    other = save_tiny_checkpoint(tmp_path_factory.mktemp("blue"), tokenizer_dir, seed=1)
    votes = tmp_path_factory.mktemp("votes") / "votes.jsonl"
    with Engine.from_spec(str(tiny_model_dir), max_batch_size=4) as red:
        with Engine.from_spec(str(other), max_batch_size=4) as blue:
            arena = Arena(votes, [Contender(COMPARED[0], red), Contender(COMPARED[1], blue)])
            with ServerThread(create_app(red, COMPARED[0], arena=arena)) as s:
                yield s, votes


def ready_comparison(browser):
    """The newest comparison once its replies are in and its vote buttons on, else None."""
    views = browser.find_elements(By.CSS_SELECTOR, ".comparison[data-id]")
    if not views or views[-1].get_attribute("data-voted"):
        return None
    buttons = views[-1].find_elements(By.CSS_SELECTOR, "button.vote")
    return views[-1] if buttons and all(b.is_enabled() for b in buttons) else None


def pane_texts(view) -> dict:
    """The replies as shown, untrimmed (an empty one shows a placeholder)."""
    out = {}
    for label in "ab":
        text = view.find_element(By.CSS_SELECTOR, f'.pane[data-label="{label}"] .pane-text')
        out[label] = text.get_attribute("textContent").replace("(empty reply)", "")
    return out


def cast(browser, wait, choice: str, clicks: int = 1) -> dict:
    """Vote on the comparison shown (clicking ``clicks`` times) and wait until the models are revealed."""
    view = wait.until(ready_comparison)
    shown = {"id": view.get_attribute("data-id"), **pane_texts(view)}
    labels = [e.text for e in view.find_elements(By.CSS_SELECTOR, ".pane-label")]
    assert labels == ["A", "B"]
    # Earlier comparisons show their models (they have been voted on); this one and the header must not.
    visible = view.text + browser.find_element(By.TAG_NAME, "header").text
    for label in "ab":
        visible = visible.replace(shown[label], "")
    assert not any(m in visible for m in COMPARED), "a model id is on the page before the vote"
    button = view.find_element(By.CSS_SELECTOR, f'button.vote[data-choice="{choice}"]')
    browser.execute_script("for (let i = 0; i < arguments[1]; i++) arguments[0].click()", button, clicks)
    wait.until(lambda b: view.get_attribute("data-voted") == choice)
    labels = [e.text for e in view.find_elements(By.CSS_SELECTOR, ".pane-label")]
    assert sorted(label.split(" · ")[1] for label in labels) == sorted(COMPARED)
    assert all(not b.is_enabled() for b in view.find_elements(By.CSS_SELECTOR, "button.vote"))
    return shown


def test_compare_mode_votes_continue_and_survive_a_reload(compare_server, browser):
    server, votes = compare_server
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda b: b.find_element(By.ID, "compare").is_enabled())
    browser.find_element(By.ID, "compare").click()
    assert browser.find_element(By.ID, "model-name").text == "blind comparison"
    for field, value in (("max-tokens", "12"), ("temperature", "1")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)

    send(browser, "Hello, who are you?")
    first = cast(browser, wait, "a", clicks=3)  # a triple click is one vote
    messages = browser.execute_script("return state.messages")
    assert messages == [
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": first["a"]},
    ]
    wait.until(lambda b: b.find_element(By.ID, "send").is_enabled())
    send(browser, "Tell me more.")
    second = cast(browser, wait, "b")
    assert browser.execute_script("return state.messages")[-1] == {
        "role": "assistant",
        "content": second["b"],
    }
    wait.until(lambda b: b.find_element(By.ID, "send").is_enabled())
    send(browser, "Say it differently.")
    third = cast(browser, wait, "both_bad")  # neither reply goes on: the turn leaves the conversation
    assert browser.execute_script("return state.messages.length") == 4
    assert browser.find_element(By.ID, "input").get_attribute("value") == "Say it differently."
    wait.until(lambda b: b.find_element(By.ID, "vote-count").text == "3 votes stored")

    browser.refresh()
    wait.until(lambda b: b.find_element(By.ID, "vote-count").text == "3 votes stored")
    assert browser.find_element(By.ID, "compare").is_selected()  # the mode survives the reload
    assert not browser.find_elements(By.CSS_SELECTOR, ".message, .comparison")
    assert browser.execute_script("return state.messages.length") == 0

    rows = [json.loads(line) for line in votes.read_text().splitlines()]
    expected = [(first["id"], "a"), (second["id"], "b"), (third["id"], "both_bad")]
    assert [(r["id"], r["choice"]) for r in rows] == expected
    assert rows[2]["chosen_model"] is None and len(rows[2]["conversation"]) == 5
    for row, shown in zip(rows, (first, second, third), strict=True):
        assert [row["replies"][k]["content"] for k in "ab"] == [shown[k] for k in "ab"]
    assert rows[1]["conversation"] == [
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": rows[0]["replies"]["a"]["content"]},
        {"role": "user", "content": "Tell me more."},
    ]
