"""Browser test of thumbs mode: Playwright driving Debian's Chromium against a real uvicorn.

One answer per page; 1 (thumbs up), 2 (thumbs down) and s (skip) submit at once; u takes the last
vote back; a rationale typed first goes with the thumb. Skipped, with the reason, when
/usr/bin/chromium is absent (`apt-get install -y chromium`).
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from preftune.web import db
from preftune.web.assign import assign_items
from preftune.web.store import NewItem

CHROMIUM = "/usr/bin/chromium"  # as in conftest.py, which launches it
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)",
)


def _shown_item(page) -> int:
    return int(page.get_attribute("#vote-form", "action").split("/")[3])


def test_thumbs_keys_vote_skip_and_undo(browser, live):
    base, store = live
    project_id = store.create_project("thumbs", "Thumbs up if a child would understand.", kind="thumbs")
    answers = {f"Question {i}?": f"<b>answer</b> {i}" for i in range(4)}  # markup must show as text
    store.add_items(project_id, [NewItem([{"role": "user", "content": q}], a, None) for q, a in answers.items()])
    user_id, token = store.create_user("ann", "annotator", project_id)
    assign_items(store, project_id, seed=7)
    page = browser.new_page()
    page.goto(f"{base}/login/{token}")
    assert page.url == f"{base}/annotate"
    assert page.locator(".pair").count() == 0 and page.locator("#answer").count() == 1
    assert page.locator("#answer b").count() == 0

    seen = {}
    first = _shown_item(page)
    seen[first] = page.inner_text("#answer-text")
    with page.expect_navigation():
        page.keyboard.press("2")  # thumbs down, submitted at once: the slip undo is for
    assert "Vote recorded." in page.inner_text("#voted") and _shown_item(page) != first
    with page.expect_navigation():
        page.keyboard.press("u")
    assert _shown_item(page) == first and "taken back" in page.inner_text(".notice")
    with page.expect_navigation():
        page.keyboard.press("1")  # the thumb meant: up
    second = _shown_item(page)
    seen[second] = page.inner_text("#answer-text")
    page.focus("textarea[name=rationale]")
    page.keyboard.type("too many big words")
    page.keyboard.press("Escape")  # leave the box; keys vote again
    with page.expect_navigation():
        page.keyboard.press("2")
    third = _shown_item(page)
    with page.expect_navigation():
        page.keyboard.press("s")
    fourth = _shown_item(page)
    page.check("input[name=choice][value=up]")  # the mouse works too
    with page.expect_navigation():
        page.click("#submit")
    assert "All done" in page.inner_text("main")

    with store.read() as c:
        rows = c.execute(
            select(db.votes.c.item_id, db.votes.c.choice, db.votes.c.rationale).where(db.votes.c.user_id == user_id)
        ).all()
    assert sorted(rows) == sorted([(first, "up", ""), (second, "down", "too many big words"), (third, "skip", ""),
                                   (fourth, "up", "")])  # fmt: skip
    for item_id, text in seen.items():
        assert text == store.item(item_id)["response_a"]  # the page showed the item's one answer
    page.close()
