"""`python -m preftune` (and `torchrun -m preftune`) run the CLI."""

from .cli import main

main()
