"""The app in Chromium at phone width and with awkward text: no sideways scrolling at 390 px, a
200,000-character answer without spaces renders in under a second, right-to-left overrides in
names stay inside the name."""

from __future__ import annotations

import os

import pytest

from preftune.web.assign import assign_items
from preftune.web.store import NewItem
from preftune.web.uploads import MAX_TEXT_CHARS

CHROMIUM = "/usr/bin/chromium"  # as in conftest.py, which launches it
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)",
)

PHONE = {"width": 390, "height": 844}
# Long words of the kind that push a layout wide: a URL, a hash, a path.
LONG_WORD = "https://example.org/" + "a-very-long-path-segment/" * 12


def _project_with_people(store, name="phone", people=("ann",), answer_b=f"See {LONG_WORD}"):
    project_id = store.create_project(name, f"Prefer short answers. {LONG_WORD}", overlap=len(people))
    store.add_items(project_id, [NewItem([{"role": "user", "content": f"Explain {LONG_WORD}"}], "Short.", answer_b)])
    tokens = [store.create_user(person, "annotator", project_id)[1] for person in people]
    assign_items(store, project_id, seed=3)
    return project_id, tokens


def _scroll_width(page) -> int:
    return page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


def test_no_page_scrolls_sideways_on_a_phone(browser, live):
    base, store = live
    project_id, (token,) = _project_with_people(store)
    admin_token = store.new_admin_token()
    context = browser.new_context(viewport=PHONE)
    annotator = context.new_page()
    annotator.goto(f"{base}/login/{token}")
    pages = {"annotate": _scroll_width(annotator)}
    annotator.goto(f"{base}/annotate/guidelines")
    pages["guidelines"] = _scroll_width(annotator)
    admin = browser.new_context(viewport=PHONE).new_page()
    admin.goto(f"{base}/login/{admin_token}")
    for path in ("/admin", f"/admin/projects/{project_id}", f"/admin/projects/{project_id}/items",
                 f"/admin/projects/{project_id}/quality", "/runs", "/playground", "/admin/projects/999"):  # fmt: skip
        admin.goto(base + path)
        pages[path] = _scroll_width(admin)
    admin.goto(f"{base}/admin/projects/{project_id}")
    admin.fill("input[name=name]", "bob")
    with admin.expect_navigation():
        admin.click("button:text-is('Invite')")
    assert admin.input_value("#invite-link").startswith(f"{base}/login/")
    pages["invited"] = _scroll_width(admin)
    wide = {path: width for path, width in pages.items() if width > PHONE["width"]}
    assert wide == {}, f"pages wider than {PHONE['width']} px: {wide}"
    context.close()
