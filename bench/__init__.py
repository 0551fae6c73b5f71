"""Benchmark harness for asyncsync: ``python -m bench run [--quick] [--smoke] [--scenario NAME ...]``.

It generates seeded datastores, runs every tool (asyncsync, rsync, rclone, and the
local limits) on the same data in its own process, and writes
``bench/results/<date>-<host>.md`` / ``.json`` / ``.png``. See ``docs/performance.md``.

This package is not part of the installed ``asyncsync`` distribution; it uses
the library only to build source datastores and otherwise drives the real CLI.
"""
