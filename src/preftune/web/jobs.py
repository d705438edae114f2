"""Background jobs started from the project page: generating candidates, auto-labeling with a judge.

A job runs in a daemon thread and writes its progress to the `jobs` table, which the page polls;
so progress survives a reload, and a job that dies with the server is marked failed at the next
start (`Store.fail_interrupted_jobs`). One job per project at a time.

Model code is imported inside the thread, never at import time: the web layer does not load torch
until someone asks it to generate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from preftune.web.store import Store, StoreError

# Progress writes are throttled: the page polls about once a second, the model may report per token.
PROGRESS_EVERY_SECONDS = 0.5
GENERATION_CHUNK = 8
# Items scored per judge call: reward-model judges batch them.
JUDGE_CHUNK = 32


def running_job(store: Store, project_id: int) -> dict[str, Any] | None:
    return next((job for job in store.jobs(project_id) if job["status"] == "running"), None)


def start_job(
    store: Store, project_id: int, kind: str, work: Callable[[Callable[[int, int], None]], str]
) -> int:
    """Run `work(progress)` in a thread; it returns a one-line result message. Returns the job id."""
    if running_job(store, project_id) is not None:
        raise StoreError("a job is already running for this project; wait for it to finish")
    job_id = store.create_job(project_id, kind)
    last_write = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last_write[0] >= PROGRESS_EVERY_SECONDS or done >= total:
            last_write[0] = now
            store.update_job(job_id, done=int(done), total=int(total), message="running")

    def run() -> None:
        try:
            message = work(progress)
            store.update_job(job_id, status="done", message=message)
        except Exception as error:  # the page shows the reason; the thread must not die silently
            store.update_job(job_id, status="failed", message=f"{type(error).__name__}: {error}"[:500])

    threading.Thread(target=run, name=f"preftune-job-{job_id}", daemon=True).start()
    return job_id


def generation_work(
    store: Store,
    project_id: int,
    model_name: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    answers: int = 2,
) -> Callable[[Callable[[int, int], None]], str]:
    """Work that fills every pending item of a project with two sampled candidates (one answer,
    `answers=1`, for a thumbs project)."""

    def work(progress: Callable[[int, int], None]) -> str:
        from preftune.data.schema import Message
        from preftune.generate import generate_completions
        from preftune.models.load import load_policy

        pending = store.items(project_id, pending=True)
        total = len(pending)
        progress(0, total)
        model, tokenizer = load_policy(model_name)
        for start in range(0, total, GENERATION_CHUNK):
            chunk = pending[start : start + GENERATION_CHUNK]
            prompts = [[Message(m["role"], m["content"]) for m in item["prompt"]] for item in chunk]

            def chunk_progress(done: int, of: int, start: int = start, size: int = len(chunk)) -> None:
                # The generator's own unit (prompts or tokens) is mapped onto this chunk's prompts.
                progress(min(start + int(size * done / max(of, 1)), total), total)

            outputs = generate_completions(
                model,
                tokenizer,
                prompts,
                answers,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed + start,
                progress=chunk_progress,
            )
            # `generate_completions` returns a `Generations` record; its texts are [prompt][sample].
            texts = getattr(outputs, "texts", outputs)
            for item, completions in zip(chunk, texts, strict=True):
                store.set_responses(item["id"], completions[0], completions[1] if answers == 2 else None)
            progress(start + len(chunk), total)
        return f"generated {answers} {'candidates' if answers == 2 else 'answer'} for {total} prompts with {model_name}"

    return work


def judge_work(store: Store, project_id: int, judge_name: str) -> Callable[[Callable[[int, int], None]], str]:
    """Work that votes on every ready item as the annotator `judge:NAME` (higher score wins)."""
    from preftune.judges import get_judge

    # Fail in the request, not the thread, on an unknown name; never import code named by a form field.
    judge = get_judge(judge_name, allow_python=False)

    def work(progress: Callable[[int, int], None]) -> str:
        from preftune.data.schema import Message
        from preftune.judges import score_batch
        from preftune.web.votes import record_judge_vote

        user_name = f"judge:{judge.name}"
        found = [u for u in store.users(project_id) if u["name"] == user_name]
        user_id = found[0]["id"] if found else store.create_user(user_name, "judge", project_id)[0]
        ready = store.items(project_id, pending=False)
        added = 0
        for start in range(0, len(ready), JUDGE_CHUNK):
            chunk = ready[start : start + JUDGE_CHUNK]
            prompts = [[Message(m["role"], m["content"]) for m in item["prompt"]] for item in chunk]
            responses = [text for item in chunk for text in (item["response_a"], item["response_b"])]
            scores = score_batch(judge, [p for p in prompts for _ in range(2)], responses)
            for offset, item in enumerate(chunk):
                score_a, score_b = scores[2 * offset], scores[2 * offset + 1]
                choice = "a" if score_a > score_b else "b" if score_b > score_a else "tie"
                added += record_judge_vote(store, project_id, user_id, item["id"], choice)
            progress(start + len(chunk), len(ready))
        return f"{user_name} voted on {added} new items ({len(ready)} ready)"

    return work


def prioritize_work(store: Store, project_id: int, reward_model: str) -> Callable[[Callable[[int, int], None]], str]:
    """Work that reorders every queue by what a vote would teach (`active.py`): the reward model's
    uncertainty on each unvoted item (with `reward_model`, an rm:DIR judge) or else the people's
    disagreement, whichever is larger."""
    from preftune.web.active import disagreement, reward_uncertainty
    from preftune.web.assign import reorder_queues
    from preftune.web.votes import project_votes

    judge = None
    if reward_model:
        from preftune.judges import get_judge

        if not reward_model.startswith("rm:"):
            raise StoreError("uncertainty needs a reward model: give rm:DIR (a folder saved by `preftune rm`)")
        judge = get_judge(reward_model)  # fail in the request, not the thread

    def work(progress: Callable[[int, int], None]) -> str:
        ready = store.items(project_id, pending=False)
        choices: dict[int, list[str]] = {}
        for vote in project_votes(store, project_id):
            if vote["user_role"] != "judge":
                choices.setdefault(vote["item_id"], []).append(vote["choice"])
        scores = {item["id"]: disagreement(choices.get(item["id"], [])) for item in ready}
        if judge is not None:
            from preftune.data.schema import Message
            from preftune.judges import score_batch

            for start in range(0, len(ready), JUDGE_CHUNK):
                chunk = ready[start : start + JUDGE_CHUNK]
                prompts = [[Message(m["role"], m["content"]) for m in item["prompt"]] for item in chunk]
                rewards = score_batch(judge, [p for p in prompts for _ in range(2)],
                                      [t for item in chunk for t in (item["response_a"], item["response_b"])])  # fmt: skip
                for offset, item in enumerate(chunk):
                    doubt = reward_uncertainty(rewards[2 * offset], rewards[2 * offset + 1])
                    scores[item["id"]] = max(scores[item["id"]], doubt)
                progress(start + len(chunk), len(ready))
        moved = reorder_queues(store, project_id, scores)
        how = f"{reward_model}'s uncertainty and the people's disagreement" if judge else "the people's disagreement"
        return f"{moved} queued items reordered by {how} (one in four at random)"

    return work
