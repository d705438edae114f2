"""`python -m preftune.web [--db URL] [--host H] [--port P] [--workers N] [--log-level L]
[--no-access-log]`: the server without the CLI (benchmarks)."""

import argparse
import sys

from preftune.web.app import serve
from preftune.web.db import DEFAULT_DB
from preftune.web.store import StoreError

parser = argparse.ArgumentParser(prog="python -m preftune.web", description="Run the labeling server.")
parser.add_argument("--db", default=DEFAULT_DB)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--log-level", default="warning")
parser.add_argument("--workers", type=int, default=1)
parser.add_argument("--no-access-log", action="store_true", help="no log line per request")
args = parser.parse_args()
try:
    serve(
        args.db, args.host, args.port, log_level=args.log_level, workers=args.workers,
        access_log=not args.no_access_log,
    )  # fmt: skip
except StoreError as error:
    sys.exit(f"error: {error}")
