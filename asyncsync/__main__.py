"""The ``asyncsync`` program: ``python -m asyncsync`` and the console script (``main``).

Only the program pauses the collector while the command's modules load
(:mod:`asyncsync.startup`); importing :mod:`asyncsync.cli.main` as a library does not.
"""

from .startup import pause

pause()  # resumed by runner.run when the work starts, or by main() when the command ends

from .cli.main import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    main()
