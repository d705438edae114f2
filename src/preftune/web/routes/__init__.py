"""One router module per area of the app: `auth` (login, logout, home), `admin` (projects, quality,
export), `annotate` (the voting page). A new area adds a module here and one line in `app.py`."""
