"""The collector paused while a command loads its modules (asyncsync.startup).

Contract: importing the package leaves the collector as it was; the command-line entry
points pause it while they load and resume it (freezing what was loaded) before the work
runs on the event loop, or when a command without one ends. Each case runs in a fresh
interpreter, since pausing is process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _py(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_importing_the_package_leaves_the_collector_running() -> None:
    assert _py("import asyncsync, gc; from asyncsync import Datastore; print(gc.isenabled())") == "True"


def test_a_disabled_collector_stays_disabled() -> None:
    code = """
        import gc; gc.disable()
        import asyncsync, asyncsync.cli.main
        from asyncsync.runner import run
        async def work(): return gc.isenabled()
        print(gc.isenabled(), run(work))
    """
    assert _py(code) == "False False"


def test_a_command_loads_paused_and_works_with_the_collector_on_and_frozen_imports() -> None:
    code = """
        import gc
        import asyncsync.cli.main  # pauses
        loading = gc.isenabled()
        from asyncsync.runner import run
        async def work(): return gc.isenabled(), gc.get_freeze_count() > 10000
        print(loading, *run(work))
    """
    assert _py(code) == "False True True"


def test_a_command_without_an_event_loop_resumes_when_it_ends() -> None:
    code = """
        import gc, sys
        import asyncsync.cli.main as m
        sys.argv = ["asyncsync", "--version"]
        try:
            m.main()
        except SystemExit:
            pass
        print(gc.isenabled())
    """
    assert _py(code).splitlines()[-1] == "True"


def test_pause_and_resume_pair_up() -> None:
    code = """
        import gc
        from asyncsync import startup
        first, second = startup.pause(), startup.pause()
        off = gc.isenabled()
        startup.resume(freeze=False); startup.resume()
        print(first, second, off, gc.isenabled(), gc.get_freeze_count())
    """
    assert _py(code) == "True False False True 0"
