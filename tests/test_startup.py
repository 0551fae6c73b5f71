"""The collector paused while a command loads its modules (asyncsync.startup).

Contract: importing the package, or the CLI's modules as a library, leaves the collector
as it was; the program (``asyncsync/__main__.py``, the console script's module) pauses it
while it loads and resumes it (freezing what was loaded) before the work runs on the
event loop, or when a command without one ends. Each case runs in a fresh interpreter,
since pausing is process-wide.
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
    assert _py("import gc, asyncsync.cli.main, asyncsync.cli.pull; print(gc.isenabled())") == "True"


def test_the_console_script_runs_the_program_module() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "asyncsync"]
    assert script.value == "asyncsync.__main__:main"


def test_a_disabled_collector_stays_disabled() -> None:
    code = """
        import gc; gc.disable()
        import asyncsync, asyncsync.__main__
        from asyncsync.runner import run
        async def work(): return gc.isenabled()
        print(gc.isenabled(), run(work))
    """
    assert _py(code) == "False False"


def test_a_command_loads_paused_and_works_with_the_collector_on_and_frozen_imports() -> None:
    code = """
        import gc
        import asyncsync.__main__  # the program: pauses (its main() is not run on import)
        loading = gc.isenabled()
        from asyncsync.runner import run
        async def work(): return gc.isenabled(), gc.get_freeze_count() > 10000
        print(loading, *run(work))
    """
    assert _py(code) == "False True True"


def test_a_command_without_an_event_loop_resumes_when_it_ends() -> None:
    code = """
        import gc, sys
        import asyncsync.__main__ as m
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
