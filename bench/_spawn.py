"""Tiny launcher: ``python -S -I _spawn.py OUT CMD...`` forks CMD, waits, writes its rusage to OUT as JSON.

Why: Linux carries a process's peak RSS across ``exec`` (``ru_maxrss`` of a child
forked from a 100 MiB Python is at least 100 MiB). Forking the tool from this
small stdlib-only process (about 8 MiB) keeps the reported peak RSS the tool's
own. Wall time is measured here, around fork and wait only. Exits with the
child's status.
"""

import json
import os
import sys
import time


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump(
            {"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "max_rss_kib": ru.ru_maxrss}, f
        )
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
