"""The hot route (`routes/annotate_hot.py`) answers exactly as the FastAPI routes behind it.

Each scenario runs twice, on two sites built the same way: one as `create_app` makes it, one with
the hot route taken out. Status, headers and bodies must match (the CSRF token, unique to each
session, aside), and so must the stored votes, row for row. A counter on the hot route shows which
requests it took, which it turned down, and which it replayed through FastAPI.
"""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from preftune.web import db
from preftune.web.app import create_app
from preftune.web.assign import assign_items
from preftune.web.routes import annotate_hot
from preftune.web.routes.annotate_hot import HotAnnotate
from preftune.web.security import COOKIE
from preftune.web.store import NewItem, Store

JSON = {"accept": "application/json"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VOTE_COLUMNS = ["vote_uid", "item_id", "user_id", "choice", "strength", "rationale", "shown_left"]


@pytest.fixture
def counted(monkeypatch):
    """{"handled": requests the hot route took, "replayed": those it handed on after reading them}."""
    counts = {"handled": 0, "replayed": 0}
    handle, replay = HotAnnotate.handle, annotate_hot._replay

    async def counting_handle(self, scope, receive, send):
        counts["handled"] += 1
        await handle(self, scope, receive, send)

    async def counting_replay(*args):
        counts["replayed"] += 1
        await replay(*args)

    monkeypatch.setattr(HotAnnotate, "handle", counting_handle)
    monkeypatch.setattr(annotate_hot, "_replay", counting_replay)
    return counts


class Site:
    """An app over its own SQLite store, with or without the hot route; clients logged in by link."""

    def __init__(self, path, hot: bool):
        self.store = Store(f"sqlite:///{path}")
        self.app = create_app(self.store, base_url="http://testserver")
        if not hot:
            self.app.router.routes[:] = [r for r in self.app.router.routes if not isinstance(r, HotAnnotate)]
        self.clients: list[TestClient] = []

    def client(self, token: str) -> TestClient:
        client = TestClient(self.app)
        self.clients.append(client)
        assert client.get(f"/login/{token}", follow_redirects=False).status_code == 303
        return client

    def admin(self) -> TestClient:
        return self.client(self.store.new_admin_token())

    def csrf(self, client: TestClient) -> str:
        return self.store.session(client.cookies.get(COOKIE))["csrf"]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.store.close()


def _site(tmp_path, name: str, hot: bool, kind: str = "pairwise"):
    site = Site(tmp_path / f"{name}.db", hot)
    store = site.store
    project_id = store.create_project("p", kind=kind, overlap=2)  # all four items in each queue
    items = [
        NewItem([{"role": "user", "content": f"Q{i}?"}], f"Q{i} answer A", f"Q{i} answer B") for i in range(4)
    ]
    store.add_items(project_id, items)
    ann = site.client(store.create_user("ann", "annotator", project_id)[1])
    store.create_user("other", "annotator", project_id)
    assign_items(store, project_id, seed=0)
    return site, ann


def _answer(response, csrf: str) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "set-cookie")}
    body = response.text.replace(csrf, "CSRF") if csrf else response.text
    body = _UUID.sub("UUID", body)  # an HTML page's fresh vote id
    return response.status_code, headers, body


def _both(tmp_path, scenario, kind: str = "pairwise") -> tuple[list, list]:
    """Run `scenario(client, csrf)` -> list of responses on a site with and one without the hot route."""
    answers, rows = [], []
    for hot in (True, False):
        site, ann = _site(tmp_path, f"hot{hot}", hot, kind)
        csrf = site.csrf(ann)
        answers.append([_answer(r, csrf) for r in scenario(ann, csrf, site)])
        with site.store.read() as c:
            rows.append(
                [
                    tuple(r)
                    for r in c.execute(select(*[db.votes.c[n] for n in VOTE_COLUMNS]).order_by(db.votes.c.id))
                ]
            )
        site.close()
    return answers, rows


def _vote(client, csrf, item_id, data, accept="application/json", **headers):
    headers = {"accept": accept, **({} if csrf is None else {"x-csrf-token": csrf}), **headers}
    return client.post(f"/annotate/items/{item_id}/vote", data=data, headers=headers, follow_redirects=False)


def test_the_common_case_is_hot_and_identical(tmp_path, counted):
    def scenario(ann, csrf, _site):
        out, voted = [], []
        for index in range(5):  # four items, then the finished queue
            page = ann.get("/annotate", headers=JSON)
            out.append(page)
            item_id = page.json()["item_id"]
            if item_id is not None:
                voted.append(item_id)
                choice = ("left", "right", "tie", "skip")[index]
                out.append(_vote(ann, csrf, item_id, {"vote_id": f"vote-{index:04d}", "choice": choice,
                                                      "strength": "2" if index < 2 else "", "rationale": " why+so? "}))  # fmt: skip
        out.append(_vote(ann, csrf, voted[0], {"vote_id": "vote-0000", "choice": "left"}))
        return out

    (hot, slow), (hot_rows, slow_rows) = _both(tmp_path, scenario)
    assert hot == slow
    assert hot_rows == slow_rows and len(hot_rows) == 4
    assert [status for status, *_ in hot] == [200] * 10
    assert json.loads(hot[-1][2])["created"] is False  # the retry of a stored vote
    headers = hot[0][1]
    assert headers["cache-control"] == "no-store" and "content-security-policy" in headers
    assert headers["x-frame-options"] == "DENY" and headers["content-type"] == "application/json"
    # All ten hot (`Site.csrf` read the session into the cache), none replayed.
    assert counted == {"handled": 10, "replayed": 0}


def test_a_thumbs_project_is_identical(tmp_path, counted):
    def scenario(ann, csrf, _site):
        first = ann.get("/annotate", headers=JSON)
        second = ann.get("/annotate", headers=JSON)
        return [
            first,
            second,
            _vote(ann, csrf, second.json()["item_id"], {"vote_id": "thumb-0001", "choice": "up"}),
        ]

    (hot, slow), (hot_rows, slow_rows) = _both(tmp_path, scenario, kind="thumbs")
    assert hot == slow and hot_rows == slow_rows and len(hot_rows) == 1
    assert counted == {"handled": 3, "replayed": 0}


def test_what_the_hot_route_turns_down_is_answered_as_before(tmp_path, counted):
    def scenario(ann, csrf, site):
        item_id = ann.get("/annotate", headers=JSON).json()["item_id"]
        cookie = ann.cookies.get(COOKIE)
        ann.cookies.clear()
        anonymous = [
            ann.get("/annotate", headers=JSON),
            _vote(ann, csrf, item_id, {"vote_id": "vote-anon1", "choice": "left"}),
        ]
        ann.cookies.set(COOKIE, cookie)
        admin = site.admin()
        return [
            *anonymous,
            ann.get("/annotate"),  # the HTML page
            ann.get("/annotate", headers={"accept": "text/html"}),
            ann.get("/annotate?notice=x", headers=JSON),
            admin.get("/annotate", headers=JSON),  # not an annotator: 403
            _vote(ann, "wrong-token", item_id, {"vote_id": "vote-csrf1", "choice": "left"}),  # CSRF: 403
            _vote(
                ann, None, item_id, {"vote_id": "vote-csrf2", "choice": "left", "csrf_token": csrf}
            ),  # form token
            _vote(ann, csrf, 2**31, {"vote_id": "vote-range", "choice": "left"}),  # past MAX_ID: 404
            _vote(ann, csrf, 99999999999, {"vote_id": "vote-range", "choice": "left"}),
            ann.post(
                f"/annotate/items/{item_id}/vote",
                json={"vote_id": "vote-json1", "choice": "left"},
                headers={**JSON, "x-csrf-token": csrf},
            ),  # fmt: skip
            _vote(
                ann, csrf, item_id + 1, {"vote_id": "vote-html1", "choice": "tie"}, accept="text/html"
            ),  # 303
            _vote(
                ann, csrf, item_id, {"vote_id": "vote-html2", "choice": "tie"}, accept="text/html"
            ),  # 409 page
        ]

    (hot, slow), (hot_rows, slow_rows) = _both(tmp_path, scenario)
    assert hot == slow and hot_rows == slow_rows
    assert [status for status, *_ in hot] == [401, 401, 200, 200, 200, 403, 403, 200, 404, 404, 422, 303, 409]
    assert counted == {"handled": 1, "replayed": 0}  # only the first page view, for the item id


def test_a_vote_the_store_refuses_or_an_odd_form_is_replayed_through_fastapi(tmp_path, counted):
    def scenario(ann, csrf, site):
        item_id = ann.get("/annotate", headers=JSON).json()["item_id"]
        others = {r[0] for r in site.store.engine.connect().execute(select(db.assignments.c.item_id))} - {
            item_id
        }
        return [
            _vote(ann, csrf, item_id, {"vote_id": "vote-strong", "choice": "left", "strength": "5"}),  # 400
            _vote(
                ann, csrf, item_id, {"vote_id": "vote-nul001", "choice": "left", "rationale": "a\x00b"}
            ),  # 400
            _vote(ann, csrf, item_id, {"vote_id": "vote-nochoice"}),  # 422
            _vote(ann, csrf, item_id, {"vote_id": "", "choice": "left"}),  # 422
            _vote(ann, csrf, item_id, {"vote_id": "bad id!", "choice": "left"}),  # StoreError: 400
            _vote(ann, csrf, item_id, {"vote_id": "vote-choice", "choice": "a"}),  # not a shown choice: 400
            _vote(ann, csrf, item_id, {"vote_id": "vote-extra1", "choice": "left", "other": "x"}),  # 200
            _vote(ann, csrf, item_id, {"vote_id": "vote-twice1", "choice": "right"}),  # AlreadyVoted: 409
            _vote(ann, csrf, 10**6, {"vote_id": "vote-nobody", "choice": "left"}),  # not assigned: 403
            _vote(ann, csrf, min(others), {"vote_id": "vote-extra1", "choice": "left"}),  # id reused: 409
        ]

    (hot, slow), (hot_rows, slow_rows) = _both(tmp_path, scenario)
    assert hot == slow and hot_rows == slow_rows and len(hot_rows) == 1
    assert [status for status, *_ in hot] == [400, 400, 422, 422, 400, 400, 200, 409, 403, 409]
    # The page view and the ten votes taken; every vote replayed, the one with an unknown field too.
    assert counted == {"handled": 11, "replayed": 10}


def test_a_vote_on_an_ended_session_is_refused_the_same_way(tmp_path, counted):
    def scenario(ann, csrf, site):
        item_id = ann.get("/annotate", headers=JSON).json()["item_id"]  # the session is cached now
        with site.store.write() as c:
            c.execute(db.sessions.delete())  # ended behind the cache's back
        return [
            _vote(ann, csrf, item_id, {"vote_id": "vote-ended", "choice": "left"}),
            ann.get("/annotate", headers=JSON),
        ]

    (hot, slow), (hot_rows, slow_rows) = _both(tmp_path, scenario)
    assert hot == slow and hot_rows == slow_rows == []
    assert [status for status, *_ in hot] == [401, 401]
    assert counted == {"handled": 2, "replayed": 1}
