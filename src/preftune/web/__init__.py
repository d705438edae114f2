"""The web app: labeling today (issue 5); the dashboard and playground add their own routers.

Map:
- `app.py`: `create_app(db)` wires everything, `serve(db, host, port)` is `preftune serve`.
- `routes/`: function views, one module per area (`auth`, `admin`, `admin_items`, `annotate`).
- `security.py`: sessions, CSRF (app-wide), roles, Content-Security-Policy.
- `render.py` + `templates/` + `static/`: server-rendered pages, a little vanilla JS, no CDN.
- `db.py`, `migrations.py`, `store.py`: tables, schema versions, projects/items/people/sessions/jobs.
- `assign.py`, `votes.py`: queues (overlap, gold, left/right order) and exactly-once votes.
- `quality.py`, `agreement.py`: per-annotator numbers, Krippendorff's alpha, Cohen's kappa.
- `export.py`: votes -> `PreferencePair` JSONL (`preftune export`); `candidates.py`: input files.
- `jobs.py`: background generation and judge auto-labeling.

Nothing here imports torch at import time; model code is imported inside the job that needs it.
"""
