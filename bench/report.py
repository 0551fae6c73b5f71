"""Ratios, targets, and the written results: ``<date>-<host>.json``, ``.md`` and ``.png``.

Every ratio is *asyncsync ÷ tool* on throughput over the same data in the same
run (> 1: asyncsync is faster; for a limit, the share of the limit reached).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .runner import DEFER_REMOVAL_CHUNKS, RECENTLY_DELETED_S

MiB = 1024 * 1024
MEMORY_LIMIT_MIB = 200.0
ASYNCSYNC = ("asyncsync-https", "asyncsync-http")


def _summary(results: dict[str, Any], scenario: str, tool: str) -> dict[str, Any] | None:
    sc = results.get("scenarios", {}).get(scenario) or {}
    entry = (sc.get("tools") or {}).get(tool)
    if not entry or not entry.get("summary"):
        return None
    s: dict[str, Any] = entry["summary"]
    return s


def add_ratios(results: dict[str, Any]) -> None:
    """Put ``ratios`` ({asyncsync tool: ratio}) into every non-asyncsync tool entry of every scenario."""
    for name, sc in results.get("scenarios", {}).items():
        tools = sc.get("tools") or {}
        mine = {a: tools[a]["summary"] for a in ASYNCSYNC if a in tools and tools[a].get("summary")}
        for tname, entry in tools.items():
            s = entry.get("summary")
            if not s or tname.startswith("asyncsync") or name == "limits":
                continue
            entry["ratios"] = {a: m["mib_s"] / s["mib_s"] for a, m in mine.items() if s.get("mib_s")}


def _ratio(results: dict[str, Any], scenario: str, a: str, b: str, key: str = "mib_s") -> float | None:
    sa, sb = _summary(results, scenario, a), _summary(results, scenario, b)
    if not sa or not sb or not sb.get(key):
        return None
    return float(sa[key]) / float(sb[key])


def _target(
    name: str,
    value: float | None,
    threshold: float,
    *,
    higher: bool = True,
    unit: str = "×",
    why_missing: str = "",
) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if higher else value <= threshold)
    return {
        "target": name,
        "value": value,
        "threshold": threshold,
        "unit": unit,
        "higher_is_better": higher,
        "met": met,
        "note": why_missing if value is None else "",
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met / not met / not measured (with the reason)."""
    skipped = results.get("skipped", {})

    def why(*tools: str) -> str:
        reasons = [
            skipped[t]
            for t in ("asyncsync", "rsync", "rclone")
            if t in skipped and any(x.startswith(t) for x in tools)
        ]
        return "; ".join(reasons) or "not measured in this run"

    def vs(name: str, scenario: str, mine: str, peer: str, threshold: float, key: str = "mib_s") -> None:
        """Append the target ``mine ÷ peer ≥ threshold`` on ``key`` in ``scenario``."""
        out.append(
            _target(
                name,
                _ratio(results, scenario, mine, peer, key),
                threshold,
                why_missing=why("asyncsync", peer),
            )
        )

    out: list[dict[str, Any]] = []
    for transport in ("https", "http"):
        vs(
            f"cold: asyncsync-{transport} ≥ 1.0× rclone-{transport}",
            "cold",
            f"asyncsync-{transport}",
            f"rclone-{transport}",
            1.0,
        )
    vs("cold: asyncsync-http ≥ 1.0× rsync (both unencrypted)", "cold", "asyncsync-http", "rsync", 1.0)
    vs("cold: asyncsync-https ≥ 1.0× rsync", "cold", "asyncsync-https", "rsync", 1.0)
    for peer, mine in (
        ("rsync", "asyncsync-http"),
        ("rclone-http", "asyncsync-http"),
        ("rclone-https", "asyncsync-https"),
    ):
        vs(f"incremental: {mine} ≥ 5× faster than {peer}", "incremental", mine, peer, 5.0)
    for transport in ("https", "http"):
        vs(
            f"small: asyncsync-{transport} chunks/s ≥ 2× rclone-{transport} files/s",
            "small",
            f"asyncsync-{transport}",
            f"rclone-{transport}",
            2.0,
            "per_s",
        )
    lat = latency_ratios(results)
    target = _target(
        "latency: asyncsync-https with the latency added at the server (--response-delay) "
        "≥ 80 % of its own cold throughput",
        lat["server"] if lat["server"] is not None else lat["proxy"],
        0.8,
        why_missing=why("asyncsync"),
    )
    if lat["server"] is None and lat["proxy"] is not None:
        # results from before the server-delay row (or its server failed): the proxy row stands in
        target["note"] = f"measured through the delay proxy ({lat['proxy_tool']}): no server-delay row"
    out.append(target)
    rl = results.get("scenarios", {}).get("ratelimit", {})
    err = rl.get("rate_error")
    out.append(
        _target(
            "ratelimit: achieved rate within ±3 % of --rate-in",
            abs(err) * 100 if isinstance(err, float) else None,
            3.0,
            higher=False,
            unit="%",
            why_missing=why("asyncsync"),
        )
    )
    excess = rl.get("max_excess_1s")
    burst = rl.get("burst")
    out.append(
        _target(
            "ratelimit: no 1 s window above rate + burst-in (excess ÷ burst)",
            excess / burst if isinstance(excess, float) and burst else None,
            1.0,
            higher=False,
            why_missing=why("asyncsync"),
        )
    )
    for transport in ("http", "https"):
        vs(
            f"noop: asyncsync-{transport} ≥ 3× faster than rsync",
            "noop",
            f"asyncsync-{transport}",
            "rsync",
            3.0,
        )
    peaks = [
        s["peak_rss_mib"]
        for name, sc in _flat_scenarios(results)
        for tname, entry in (sc.get("tools") or {}).items()
        if tname.startswith("asyncsync") and (s := entry.get("summary"))
    ]
    out.append(
        _target(
            "memory: asyncsync pull peak RSS ≤ 200 MiB in every scenario",
            max(peaks) if peaks else None,
            MEMORY_LIMIT_MIB,
            higher=False,
            unit="MiB",
            why_missing=why("asyncsync"),
        )
    )
    sizes = (results.get("scenarios", {}).get("scale") or {}).get("sizes") or {}
    rss = {
        k: v["tools"]["asyncsync-https"]["summary"]["peak_rss_mib"]
        for k, v in sizes.items()
        if v.get("tools", {}).get("asyncsync-https", {}).get("summary")
    }
    growth = None
    if len(rss) >= 2:
        small, big = next(iter(rss.values())), list(rss.values())[-1]
        growth = big / small
    out.append(
        _target(
            f"scale: peak RSS at {' vs '.join(rss) or 'two sizes'} grows ≤ 10 %",
            growth,
            1.10,
            higher=False,
            why_missing=why("asyncsync"),
        )
    )
    return out


def latency_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The ``latency`` scenario's ratios against asyncsync-https undelayed in the same scenario.

    ``server``: the row whose delay the server adds (``asyncsync serve --response-delay``,
    tool ``asyncsync-https+<d>ms-server``): the target's value, as no extra process
    shares the cores. ``proxy``: the row through the bench's delay proxy (information:
    the proxy's own CPU weighs on it). ``proxy_vs_rclone``: asyncsync ÷ rclone, both
    through the proxy (the peer comparison). Each is None when its rows are missing
    (results files from before the server-delay row have no ``server``).
    """
    tools = (results.get("scenarios", {}).get("latency") or {}).get("tools") or {}
    delayed = [t for t in tools if t.startswith("asyncsync-https+")]
    server = next((t for t in delayed if t.endswith("-server")), None)
    proxy = next((t for t in delayed if not t.endswith("-server")), None)
    rclone = next((t for t in tools if t.startswith("rclone-https+")), None)
    return {
        "server_tool": server,
        "server": _ratio(results, "latency", server, "asyncsync-https") if server else None,
        "proxy_tool": proxy,
        "proxy": _ratio(results, "latency", proxy, "asyncsync-https") if proxy else None,
        "rclone_tool": rclone,
        "proxy_vs_rclone": _ratio(results, "latency", proxy, rclone) if proxy and rclone else None,
    }


def _flat_scenarios(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, sc in results.get("scenarios", {}).items():
        if name == "scale":
            out += [(f"scale-{k}", v) for k, v in (sc.get("sizes") or {}).items()]
        else:
            out.append((name, sc))
    return out


def _f(v: Any, fmt: str = ".1f") -> str:
    if v is None:
        return "–"
    return format(v, fmt)


def _latency_text(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    """What the latency rows are and their ratios (see :func:`latency_ratios`)."""
    lat = latency_ratios(results)
    delay = _f(sc.get("delay_ms"), "g")
    proxy = (
        "the bench's delay proxy, a Python process on the same cores whose CPU the measurement also "
        "pays; the proxy rows are for the comparison with rclone, which goes through the same proxy."
    )
    if lat["server_tool"]:
        lines = [
            f"{delay} ms is added to every response in two ways. The target row, `{lat['server_tool']}`, "
            f"pulls from a second asyncsync server started with `--response-delay {delay}ms` (awaited in "
            "the server before each handler: no extra process). The other rows go through " + proxy,
        ]
    else:
        lines = [f"{delay} ms is added to every response by " + proxy]
        if sc.get("server_delay_error"):
            first = str(sc["server_delay_error"]).splitlines()[0][:120]
            why = f"the `--response-delay` server did not start ({first})"
        else:
            why = "this run has no server-delay row (an older harness)"
        lines.append(f"The target uses the proxy row here: {why}.")
    parts = []
    if lat["server"] is not None:
        parts.append(f"server delay {lat['server']:.2f} (target ≥ 0.80)")
    if lat["proxy"] is not None:
        role = "information" if lat["server"] is not None else "the target's value in this run"
        parts.append(f"through the proxy {lat['proxy']:.2f} ({role})")
    if parts:
        lines.append("Throughput ÷ asyncsync-https without delay in this scenario: " + "; ".join(parts) + ".")
    if lat["proxy_vs_rclone"] is not None:
        lines.append(
            f"Both through the proxy: {lat['proxy_tool']} ÷ {lat['rclone_tool']} = "
            f"{lat['proxy_vs_rclone']:.2f}×."
        )
    return lines


def to_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# asyncsync benchmark, {meta['date']} on {meta['host']}",
        "",
        f"Command: `{meta['command']}` (profile **{meta['profile']}**, {meta['rounds']} round(s), "
        f"median and min–max shown).",
        f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), load average at start "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_avg_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in meta.get('load_avg_end', (0, 0, 0)))}; Python {meta['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) + ".",
        f"asyncsync CLI start-up (`asyncsync --version`): {_f(meta.get('asyncsync_startup_s'), '.2f')} s, "
        "included in every asyncsync wall time (rsync and rclone start in milliseconds).",
        "",
        "Ratios are **asyncsync ÷ tool** throughput on the same data in this run (> 1: asyncsync faster; "
        "against a limit: the share of the limit reached).",
        "",
    ]
    if results.get("skipped"):
        lines.append("Skipped: " + "; ".join(f"**{k}**: {v}" for k, v in results["skipped"].items()))
        lines.append("")
    lines += ["## Targets", "", "| target | measured | threshold | status |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        status = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        val = "–" if t["value"] is None else f"{t['value']:.2f} {t['unit']}"
        thr = f"{'≥' if t['higher_is_better'] else '≤'} {t['threshold']:g} {t['unit']}"
        lines.append(f"| {t['target']} | {val} | {thr} | {status}{(': ' + t['note']) if t['note'] else ''} |")
    lines.append("")
    limits = results.get("scenarios", {}).get("limits")
    if limits:
        lines += ["## Local limits", "", "| limit | MiB/s (median) | min–max |", "|---|---|---|"]
        for name, e in limits["tools"].items():
            s = e["summary"]
            lines.append(
                f"| {name} (one thread) | {s['mib_s']:.0f} | {s['mib_s_min']:.0f}–{s['mib_s_max']:.0f} |"
            )
        lines.append("")
    for name, sc in _flat_scenarios(results):
        if name == "limits":
            continue
        lines += [f"## {name}", ""]
        if sc.get("skipped") or sc.get("error"):
            lines += [f"Not run: {sc.get('skipped') or sc.get('error')}", ""]
            continue
        ds = results.get("datasets", {}).get(sc.get("dataset", ""), {})
        if ds:
            total = ds["total_bytes"] / MiB
            moved = sc["transfer_bytes"] / MiB
            lines.append(
                f"Dataset `{ds['spec']['kind']}`: {total:.1f} MiB in {ds['total_files']} files, "
                f"{ds['chunks']} chunks, {ds['snapshots']} snapshots in {ds['groups']} groups; this sync "
                f"moves {moved:.1f} MiB ({sc['transfer_chunks']} chunks, {sc['transfer_files']} files)."
            )
        if name == "ratelimit" and "achieved_rate" in sc:
            err = sc["rate_error"] * 100
            excess = sc["max_excess_1s"] / MiB
            lines.append(
                f"Rate set {sc['rate'] / MiB:.0f} MiB/s, achieved {sc['achieved_rate'] / MiB:.2f} MiB/s "
                f"(error {err:+.2f} %), largest 1 s excess {excess:.2f} MiB "
                f"(burst {sc['burst'] / MiB:.0f} MiB), measured at the bench's proxy."
            )
        if name == "latency":
            lines += _latency_text(results, sc)
        if name == "noop":
            lines.append(
                "Nothing new: MiB/s is the checked dataset size ÷ wall time, so ratios are wall-time ratios. "
                "asyncsync's first round, the first noop after the initial sync, reads every group and "
                "records a pull checkpoint; later rounds, like a scheduled job's next runs, settle from it "
                '(docs/architecture.md, "Pull checkpoints"): the min–max column shows both.'
            )
        lines += [
            "",
            "| tool | MiB/s | min–max | chunks or files/s | wall s | CPU s (client / server) "
            "| CPU s/GiB (client / server) | peak RSS MiB (client / server) "
            "| asyncsync-https ÷ | asyncsync-http ÷ |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for tname, e in (sc.get("tools") or {}).items():
            s = e.get("summary") or {}
            if not s:
                first = (e.get("error") or "no result").splitlines()[0][:120]
                lines.append(f"| {tname} | failed: {first} ||||||||| ")
                continue
            r = e.get("ratios", {})
            cpu = f"{s['cpu_s']:.2f} / {_f(s.get('server_cpu_s'), '.2f')}"
            per_gib = f"{s['cpu_s_per_gib']:.2f} / {_f(s.get('server_cpu_s_per_gib'), '.2f')}"
            srv_rss = _f(s.get("server_peak_rss_mib"), ".0f")
            lines.append(
                f"| {tname} | {s['mib_s']:.1f} | {s['mib_s_min']:.1f}–{s['mib_s_max']:.1f} "
                f"| {s['per_s']:.0f} "
                f"| {s['wall_s']:.2f} | {cpu} | {per_gib} | {s['peak_rss_mib']:.0f} / {srv_rss} "
                f"| {_f(r.get('asyncsync-https'), '.2f')} | {_f(r.get('asyncsync-http'), '.2f')} |"
            )
        lines.append("")
    lines += [
        "## Method",
        "",
        "Each tool runs in its own process on 127.0.0.1; wall time is the whole process (start-up included), "
        "except the limits (`http-get`, `https-get`, blake3, zstd, file-write), whose own work time is used. "
        "CPU and peak RSS of a client come from `wait4` rusage; a server's CPU from /proc (its own plus "
        "reaped children's) over the run, its peak RSS from VmHWM. Rounds are interleaved across tools; "
        "the target is "
        "emptied (cold) or reset to the pre-synced state (incremental) before each round and its file system "
        "flushed, untimed. Targets are checked after every round (chunk and snapshot counts), then removed, "
        f"or, with {DEFER_REMOVAL_CHUNKS:,} chunks or more, set aside (page cache dropped) and removed when "
        f"the scenario ends, followed by a {RECENTLY_DELETED_S:.0f} s pause (ext4 without a journal scans "
        "inodes deleted in the last 60 s), untimed. See docs/performance.md.",
        "",
    ]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> bool:
    """A PNG with one panel per scenario (median MiB/s, min–max as error bars); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [(n, sc) for n, sc in _flat_scenarios(results) if (sc.get("tools") or {}) and n != "limits"]
    limits = results.get("scenarios", {}).get("limits")
    if limits:
        panels.append(("limits", limits))
    if not panels:
        return False
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, (name, sc) in zip(axes.flat, panels, strict=False):
        names, vals, lo, hi, colors = [], [], [], [], []
        for tname, e in sc["tools"].items():
            s = e.get("summary")
            if not s:
                continue
            names.append(tname)
            vals.append(s["mib_s"])
            lo.append(s["mib_s"] - s["mib_s_min"])
            hi.append(s["mib_s_max"] - s["mib_s"])
            colors.append(
                "#d62728"
                if tname.startswith("asyncsync")
                else "#7f7f7f"
                if tname.endswith("-get") or name == "limits"
                else "#1f77b4"
            )
        ax.barh(names, vals, xerr=[lo, hi], color=colors)
        ax.set_title(name + (" (MiB/s over the checked data)" if name == "noop" else " (MiB/s)"), fontsize=10)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"asyncsync bench {results['meta']['date']} {results['meta']['host']} ({results['meta']['profile']})",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(results: dict[str, Any], results_dir: Path) -> dict[str, Path]:
    """Evaluate, then write ``<date>-<host>[-profile].json/.md/.png``; returns the paths written."""
    add_ratios(results)
    results["targets"] = evaluate_targets(results)
    meta = results["meta"]
    host = re.sub(r"[^A-Za-z0-9._-]", "_", meta["host"])
    stem = f"{meta['date'][:10]}-{host}" + ("" if meta["profile"] == "full" else f"-{meta['profile']}")
    if meta.get("scenarios_subset"):
        # a partial run must not overwrite the day's complete results
        stem += "-" + "-".join(meta["scenarios_subset"])
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": results_dir / f"{stem}.json", "md": results_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths["md"].write_text(to_markdown(results))
    png = results_dir / f"{stem}.png"
    if chart(results, png):
        paths["png"] = png
    return paths


__all__ = ["add_ratios", "chart", "evaluate_targets", "latency_ratios", "to_markdown", "write"]
