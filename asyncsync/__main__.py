"""``python -m asyncsync``."""

from .cli.main import main

main()
