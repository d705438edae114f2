"""Admin pages about a project's items: imports, gold marking, the quality page and export."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from preftune.web.export import parse_drop, project_rows
from preftune.web.mace import MIN_SHARED_ITEMS, competence
from preftune.web.quality import agreement, annotator_quality, judge_agreement
from preftune.web.render import render
from preftune.web.routes.admin import back
from preftune.web.security import get_store, require_admin
from preftune.web.store import NewItem, StoreError
from preftune.web.uploads import check_rows, data_error, saved_upload
from preftune.web.votes import project_votes

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

ITEMS_PER_PAGE = 100


@router.post("/projects/{project_id}/prompts")
def import_prompts(request: Request, project_id: int, file: UploadFile = File(...)):
    from preftune.data.formats import read_prompts
    from preftune.data.schema import DataError

    store = get_store(request)
    store.project(project_id)
    with tempfile.TemporaryDirectory() as folder:
        try:
            prompts = read_prompts(saved_upload(file, folder))
        except DataError as error:
            raise data_error(error, file) from None
    check_rows(file.filename, [[m.content for m in p] for p in prompts])
    store.add_items(project_id, [NewItem([m.to_dict() for m in p], source=file.filename) for p in prompts])
    return back(project_id, f"{len(prompts)} prompts imported; generate candidates for them next")


@router.post("/projects/{project_id}/candidates")
def import_candidates(request: Request, project_id: int, file: UploadFile = File(...)):
    from preftune.data.schema import DataError
    from preftune.web.candidates import read_answers, read_candidates

    store = get_store(request)
    thumbs = store.project(project_id)["kind"] == "thumbs"
    with tempfile.TemporaryDirectory() as folder:
        try:
            rows, report = (read_answers if thumbs else read_candidates)(saved_upload(file, folder))
        except DataError as error:
            raise data_error(error, file) from None
    check_rows(file.filename, [[m.content for m in row.prompt] + row.responses for row in rows])
    if thumbs:  # every answer is an item of its own, rated alone
        answers = [
            NewItem([m.to_dict() for m in row.prompt], response, None, file.filename,
                    row.id if len(row.responses) == 1 or row.id is None else f"{row.id}:{i}",
                    row.models[i] if row.models else None)  # fmt: skip
            for row in rows
            for i, response in enumerate(row.responses)
        ]
        store.add_items(project_id, answers)
        report.path = file.filename
        return back(project_id, f"{len(answers)} answers imported: {report.summary()}")
    new = [
        NewItem(
            [m.to_dict() for m in row.prompt], row.responses[i], row.responses[j], file.filename,
            row.id if len(row.pairs()) == 1 or row.id is None else f"{row.id}:{i}-{j}",
            row.models[i] if row.models else None, row.models[j] if row.models else None,
        )  # fmt: skip
        for row in rows
        for i, j in row.pairs()
    ]
    store.add_items(project_id, new)
    report.path = file.filename
    return back(project_id, f"candidate pairs imported: {report.summary()}")


@router.get("/projects/{project_id}/items")
def items_page(request: Request, project_id: int, page: int = 0, notice: str = ""):
    store = get_store(request)
    project = store.project(project_id)
    every = store.items(project_id)
    shown = every[page * ITEMS_PER_PAGE : (page + 1) * ITEMS_PER_PAGE]
    pages = (len(every) + ITEMS_PER_PAGE - 1) // ITEMS_PER_PAGE
    return render(
        request,
        "items.html",
        title="Items",
        project=project,
        items=shown,
        page=page,
        pages=pages,
        notice=notice,
    )


@router.post("/projects/{project_id}/items/{item_id}/gold")
def set_gold(request: Request, project_id: int, item_id: int, gold: str = Form(""), page: int = Form(0)):
    from fastapi.responses import RedirectResponse

    store = get_store(request)
    if store.item(item_id)["project_id"] != project_id:
        raise StoreError(f"item {item_id} is not in this project")
    store.set_gold(item_id, gold or None)
    return RedirectResponse(f"/admin/projects/{project_id}/items?page={page}#item-{item_id}", status_code=303)


@router.get("/projects/{project_id}/quality")
def quality_page(request: Request, project_id: int):
    store = get_store(request)
    project = store.project(project_id)
    votes = project_votes(store, project_id)
    return render(
        request,
        "quality.html",
        title="Quality",
        project=project,
        annotators=annotator_quality(votes),
        agreement=agreement(votes),
        judges=judge_agreement(votes),
        competence=competence(votes),
        min_shared=MIN_SHARED_ITEMS,
        vote_count=sum(v["choice"] != "skip" for v in votes),
        skip_count=sum(v["choice"] == "skip" for v in votes),
    )


@router.get("/projects/{project_id}/arena")
def arena_page(request: Request, project_id: int):
    from preftune.web.arena import battles, leaderboard

    store = get_store(request)
    project = store.project(project_id)
    fights = battles(store.items(project_id), project_votes(store, project_id))
    return render(
        request, "arena.html", title="Arena", project=project, rows=leaderboard(fights), battles=len(fights),
    )  # fmt: skip


@router.get("/projects/{project_id}/export.jsonl")
def export(request: Request, project_id: int, min_votes: int = 1, drop: str = "ties,both_bad", unpaired: bool = False):
    """Pairs, or unpaired rows {prompt, completion, label} (a thumbs project, or `?unpaired=1`)."""
    from preftune.data.schema import write_jsonl

    store = get_store(request)
    project = store.project(project_id)
    if min_votes < 1:
        raise StoreError("min votes must be at least 1")
    try:
        dropped_labels = parse_drop(drop)
    except ValueError as error:
        raise StoreError(str(error)) from None
    pairs, _dropped, _unit = project_rows(store, project, min_votes, dropped_labels, unpaired)
    with tempfile.TemporaryDirectory() as folder:
        # The same writer as `preftune export`, so the download is byte-identical canonical JSONL.
        write_jsonl(pairs, Path(folder) / "pairs.jsonl")
        body = (Path(folder) / "pairs.jsonl").read_bytes()
    filename = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in project["name"])
    filename += "-unpaired.jsonl" if unpaired and project["kind"] == "pairwise" else ".jsonl"
    return Response(
        body,
        media_type="application/jsonl; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )
