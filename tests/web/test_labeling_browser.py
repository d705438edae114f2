"""Browser tests: Playwright driving Debian's Chromium against a real uvicorn on 127.0.0.1.

Skipped, with the reason, when /usr/bin/chromium is absent (`apt-get install -y chromium`).
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


def _annotator_with_items(store, items, guideline="Pick the clearer answer."):
    project_id = store.create_project("browser", guideline, overlap=1)
    store.add_items(project_id, items)
    user_id, token = store.create_user("ann", "annotator", project_id)
    assign_items(store, project_id, seed=7)
    return user_id, token


def test_keyboard_voting_stores_what_was_pressed_and_the_order_shown(browser, live):
    base, store = live
    items = [
        NewItem([{"role": "user", "content": f"Question {i}?"}], f"answer A{i}", f"answer B{i}")
        for i in range(5)
    ]
    user_id, token = _annotator_with_items(store, items)
    page = browser.new_page()
    page.goto(f"{base}/login/{token}")
    assert page.url == f"{base}/annotate"
    # (keys before submitting, the key that submits, rationale typed in the box, expected (side, strength))
    plan = [
        (["1"], "Enter", None, ("left", None)),
        (["2"], "e", None, ("right", 3)),
        (["3"], "Enter", None, ("tie", None)),
        ([], "s", None, ("skip", None)),
        (["4"], "Control+Enter", "both miss the point", ("both_bad", None)),
    ]
    shown = []
    for keys, submit_key, rationale, expected in plan:
        action = page.get_attribute("#vote-form", "action")
        item_id = int(action.split("/")[3])
        shown.append(
            (item_id, page.inner_text("#left-text"), page.inner_text("#right-text"), expected, rationale)
        )
        for key in keys:
            page.keyboard.press(key)
        if rationale:
            page.focus("textarea[name=rationale]")
            page.keyboard.type(rationale)
        with page.expect_navigation():
            page.keyboard.press(submit_key)
    assert "All done" in page.inner_text("main")
    assert page.inner_text("main").count("5 items") == 1

    assert len({item_id for item_id, *_ in shown}) == 5
    with store.read() as c:
        votes = {r.item_id: r for r in c.execute(select(db.votes).where(db.votes.c.user_id == user_id))}
        orders = dict(
            c.execute(
                select(db.assignments.c.item_id, db.assignments.c.shown_left).where(
                    db.assignments.c.user_id == user_id
                )
            ).all()
        )
    assert len(votes) == 5
    for item_id, left_text, right_text, (side, strength), rationale in shown:
        item, vote, left = store.item(item_id), votes[item_id], orders[item_id]
        right = "b" if left == "a" else "a"
        # The page showed the stored order, and the vote kept it.
        assert (left_text, right_text) == (item[f"response_{left}"], item[f"response_{right}"])
        assert vote.shown_left == left
        assert vote.choice == {"left": left, "right": right}.get(side, side)
        assert vote.strength == strength
        assert vote.rationale == (rationale or "")
    page.close()


def test_script_and_img_payloads_render_as_inert_text(browser, live):
    base, store = live
    script = "<script>window.__xss = 1</script>"
    image = '<img src=x onerror="window.__xss = 2">'
    items = [NewItem([{"role": "user", "content": f"Say {script}"}], f"Sure: {script}", f"Here: {image}")]
    _user_id, token = _annotator_with_items(store, items, guideline=f"Rules {script} {image}")
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{base}/login/{token}")
    page.wait_for_load_state("load")
    texts = {page.inner_text("#left-text"), page.inner_text("#right-text")}
    assert texts == {f"Sure: {script}", f"Here: {image}"}
    assert script in page.inner_text(".prompt")
    page.click("#guidelines summary")
    assert image in page.inner_text("#guidelines .md")
    assert page.evaluate("window.__xss") is None and dialogs == []
    # No element came out of the payloads: the only script is the page's own, and no image exists.
    assert page.locator("img").count() == 0
    assert page.evaluate("Array.from(document.scripts).map(s => s.getAttribute('src'))") == [
        "/static/annotate.js"
    ]
    page.close()


def _shown_item(page) -> int:
    return int(page.get_attribute("#vote-form", "action").split("/")[3])


def _logged_in_page(browser, live, count: int):
    """(page on the annotator's first item, store, user id, that item's id, the login link)."""
    base, store = live
    items = [NewItem([{"role": "user", "content": f"Q{i}?"}], f"A{i}", f"B{i}") for i in range(count)]
    user_id, token = _annotator_with_items(store, items)
    page = browser.new_page()
    page.goto(f"{base}/login/{token}")
    return page, store, user_id, _shown_item(page), f"{base}/login/{token}"


def test_undo_brings_back_an_item_voted_by_a_single_key(browser, live):
    page, store, _user_id, first, _link = _logged_in_page(browser, live, 3)
    with page.expect_navigation():
        page.keyboard.press("s")  # skips at once: the slip undo is for
    assert "Vote recorded." in page.inner_text("#voted") and _shown_item(page) != first
    with page.expect_navigation():
        page.keyboard.press("u")
    assert _shown_item(page) == first and "taken back" in page.inner_text(".notice")
    assert store.item_counts(store.projects()[0]["id"])["skips"] == 0
    page.keyboard.press("1")
    with page.expect_navigation():
        page.keyboard.press("r")  # A much better, submitted at once
    with page.expect_navigation():
        page.click("#undo")
    assert _shown_item(page) == first
    page.keyboard.press("2")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    with store.read() as c:
        stored = c.execute(select(db.votes.c.item_id, db.votes.c.choice, db.votes.c.strength)).all()
        left = c.execute(select(db.assignments.c.shown_left).where(db.assignments.c.item_id == first)).scalar()
    assert stored == [(first, "b" if left == "a" else "a", None)]
    page.close()


def test_a_vote_made_after_the_session_ended_is_kept_through_the_login(browser, live):
    page, store, user_id, item_id, link = _logged_in_page(browser, live, 2)
    with store.write() as c:
        c.execute(db.sessions.delete())  # the session ends while the page is open
    page.keyboard.press("2")
    page.focus("textarea[name=rationale]")
    page.keyboard.type("B cites a source")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert "open your login link again" in page.inner_text("main")
    assert "CSRF" not in page.inner_text("main")
    page.goto(link)
    assert _shown_item(page) == item_id
    assert page.is_checked("input[name=choice][value=right]")
    assert page.input_value("textarea[name=rationale]") == "B cites a source"
    assert "filled in" in page.inner_text("#hint")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    with store.read() as c:
        vote = c.execute(select(db.votes).where(db.votes.c.user_id == user_id)).one()
        left = c.execute(select(db.assignments.c.shown_left).where(db.assignments.c.item_id == item_id)).scalar()
    assert (vote.item_id, vote.choice, vote.rationale) == (item_id, "b" if left == "a" else "a", "B cites a source")
    # The next item starts clean: the kept vote was used once.
    assert not page.is_checked("input[name=choice][value=right]") and page.input_value("textarea[name=rationale]") == ""
    page.close()
