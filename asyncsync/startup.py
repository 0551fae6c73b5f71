"""The cyclic garbage collector paused while a short-lived process loads its modules.

Loading the modules of ``asyncsync pull`` allocates tens of thousands of objects (classes,
functions, dataclass machinery) that live as long as the process, and the collector
scans them over and over while they pile up: measured on the 2-core VM, those imports
took 117–142 ms with it and 91–106 ms without (three runs each, ``gc.disable()`` first).

So the programs call :func:`pause` first thing (``asyncsync/__main__.py``, the
console script's module, and ``bench/pullproc.py``), and :func:`resume` runs when the
work starts (:func:`asyncsync.runner.run`, before the event loop) or the command ends.
Resuming freezes what was loaded (:func:`gc.freeze`: those objects stay out of every
later collection, which then only scans what the work allocates). A library import,
the CLI's modules included, never leaves the collector paused: the package's own
imports pause and resume it around themselves only (``asyncsync/__init__.py``).
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> bool:
    """Pause the collector if it runs and nothing paused it yet; True if this call did."""
    global _paused
    if _paused or not gc.isenabled():
        return False
    gc.disable()
    _paused = True
    return True


def resume(*, freeze: bool = True) -> None:
    """Undo :func:`pause` (nothing if it did not pause): with ``freeze``, what exists now is
    moved out of later collections first. Idempotent."""
    global _paused
    if not _paused:
        return
    _paused = False
    if freeze:
        gc.freeze()
    gc.enable()


__all__ = ["pause", "resume"]
