"""Imports of files that are not plain UTF-8 JSONL, and the stated limits: a 400 naming file, line
and reason, never a 500; UTF-8 with a byte-order mark is read as usual."""

from __future__ import annotations

import gzip
import html
import json

import pytest

from preftune.web.uploads import MAX_IMPORT_ROWS, MAX_JSON_DEPTH, MAX_TEXT_CHARS

GOOD = (json.dumps({"prompt": "Why is the sky blue?", "completions": ["Light scatters.", "Magic."]}) + "\n").encode()
NESTED = "[" * 100_000 + "]" * 100_000


def _upload(site, client, project_id, route, name, data):
    return client.post(
        f"/admin/projects/{project_id}/{route}",
        files={"file": (name, data)},
        data={"csrf_token": site.csrf(client)},
        headers={"accept": "text/html"},  # as a browser's form post
        follow_redirects=False,
    )


@pytest.mark.parametrize("route", ["candidates", "prompts"])
@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("c.jsonl.gz", gzip.compress(GOOD), "c.jsonl.gz: gzip-compressed; gunzip it and upload the .jsonl inside"),
        ("c.jsonl", GOOD.decode().encode("utf-16"), "c.jsonl:1: encoded as UTF-16 (byte-order mark); save it as UTF-8"),
        ("c.jsonl", GOOD.decode().encode("utf-16-le"), "c.jsonl:1: binary data (a NUL byte at column 2)"),
        ("c.jsonl", GOOD + b'{"prompt": "caf\xe9", "completions": ["a", "b"]}\n',
         "c.jsonl:2: not valid UTF-8 (byte 0xe9 at column 16); save it as UTF-8"),
        ("c.jsonl", GOOD + bytes(range(256)), "c.jsonl:2: binary data (a NUL byte at column 1)"),
        ("c.jsonl", GOOD * 3 + f'{{"prompt": "x", "completions": ["a", "b"], "m": {NESTED}}}\n'.encode(),
         f"c.jsonl:4: JSON nested deeper than {MAX_JSON_DEPTH} levels"),
        ("c.json", ("[\n" + NESTED + "\n]").encode(), f"c.json:2: JSON nested deeper than {MAX_JSON_DEPTH} levels"),
        ("c.jsonl", GOOD.replace(b"Magic.", b"x" * (MAX_TEXT_CHARS + 1)),
         f"c.jsonl: row 1: a text of {MAX_TEXT_CHARS + 1:,} characters; the limit is {MAX_TEXT_CHARS:,}"),
        ("c.jsonl", GOOD.replace(b"Magic.", b"Ma\\u0000gic."), "c.jsonl: row 1: a NUL character"),
    ],
)  # fmt: skip
def test_unreadable_uploads_answer_400_naming_file_line_and_reason(site, route, name, data, message):
    if route == "prompts" and "row 1" in message and "NUL" not in message:
        data = (json.dumps({"prompt": "x" * (MAX_TEXT_CHARS + 1)}) + "\n").encode()
    if route == "prompts" and "row 1: a NUL" in message:
        data = b'{"prompt": "a\\u0000b"}\n'
    project_id = site.store.create_project("p")
    admin = site.admin()
    answer = _upload(site, admin, project_id, route, name, data)
    assert answer.status_code == 400, answer.text
    assert html.escape(message, quote=False) in answer.text
    assert f'<a href="/admin/projects/{project_id}">Back to the project</a>' in answer.text
    assert site.store.item_counts(project_id)["items"] == 0
    # The connection is still good: the next request on it works.
    assert admin.get(f"/admin/projects/{project_id}").status_code == 200


def test_utf8_with_a_byte_order_mark_is_read(site):
    project_id = site.store.create_project("p")
    admin = site.admin()
    answer = _upload(site, admin, project_id, "candidates", "bom.jsonl", b"\xef\xbb\xbf" + GOOD * 2)
    assert answer.status_code == 303 and "kept%202" in answer.headers["location"]
    prompts = _upload(site, admin, project_id, "prompts", "bom.txt", "\ufeffFirst?\nSecond?\n".encode())
    assert prompts.status_code == 303
    texts = [i["prompt"][0]["content"] for i in site.store.items(project_id)]
    assert texts == ["Why is the sky blue?", "Why is the sky blue?", "First?", "Second?"]


def test_the_limits_are_stated_on_the_project_page_and_a_file_at_the_limit_is_taken(site):
    project_id = site.store.create_project("p")
    admin = site.admin()
    page = admin.get(f"/admin/projects/{project_id}").text
    assert f"{MAX_IMPORT_ROWS:,} rows and {MAX_TEXT_CHARS:,} characters per message or answer" in page
    at_limit = GOOD.replace(b"Magic.", "é".encode() * MAX_TEXT_CHARS)
    assert _upload(site, admin, project_id, "candidates", "big.jsonl", at_limit).status_code == 303
    assert len(site.store.items(project_id)[0]["response_b"]) == MAX_TEXT_CHARS


def test_real_sharegpt_file_still_imports(site, shared_data):
    project_id = site.store.create_project("p")
    admin = site.admin()
    data = (shared_data / "dpo_en_demo.json").read_bytes()
    answer = _upload(site, admin, project_id, "candidates", "dpo_en_demo.json", data)
    assert answer.status_code == 303, answer.text
    assert site.store.item_counts(project_id)["items"] > 0
