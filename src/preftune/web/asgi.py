"""The app as an import string, for uvicorn's worker processes (`preftune serve --workers N`).

uvicorn starts each worker by importing `preftune.web.asgi:app`; a worker reads its settings from
the environment `serve` set before starting them (`app.worker_environment`). Another ASGI server can
use it the same way: `PREFTUNE_DB=postgresql://... PREFTUNE_BASE_URL=https://label.example.org
uvicorn preftune.web.asgi:app --workers 4`. Workers never mark running jobs failed at start (`serve`
does that once, before starting them): a worker that uvicorn restarts must not fail the jobs its
siblings are running.
"""

from preftune.web.app import app_from_environment

app = app_from_environment()
