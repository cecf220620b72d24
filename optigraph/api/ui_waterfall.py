"""The run page's waterfall: the run, each task of its steps and each upstream call on one time axis.

A row's bar starts at its offset from the run's start and is as wide as it lasted, both in percent of
the run's span (inline `left`/`width` styles, so the page needs no script); bars that overlap ran at
the same time. Tasks take their step's times (the checkpoints before and after it), calls their start
and latency as recorded. Every row also carries `data-start-ms` and `data-duration-ms`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from html import escape
from typing import Any

from optigraph.engine import inspection


def _time(value: Any) -> dt.datetime | None:
    """An ISO timestamp as an aware datetime (stored naive times are UTC)."""
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, str) and value:
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def waterfall_rows(detail: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per bar: kind (run, task, call), label, depth, start/end, status, tokens."""
    rows: list[dict[str, Any]] = []
    created, finished = _time(detail.get("created_at")), _time(detail.get("finished_at"))
    usage = detail.get("usage") or {}
    if created is not None:
        end = finished or (created + dt.timedelta(milliseconds=float(detail.get("latency_ms") or 0)))
        rows.append(
            {
                "kind": "run",
                "label": detail.get("expression") or "run",
                "depth": 0,
                "start": created,
                "end": end,
                "status": detail.get("status") or "",
                "tokens": usage.get("total_tokens"),
            }
        )
    for thread in detail.get("threads") or ():
        for depth, step, task in inspection.iter_steps(thread.get("steps") or []):
            start = _time(step.get("started_at"))
            if start is None:
                continue
            rows.append(
                {
                    "kind": "task",
                    "label": task["name"],
                    "depth": depth + 1,
                    "start": start,
                    "end": _time(step.get("finished_at")) or finished or start,
                    "status": task.get("status") or "",
                    "tokens": None,
                }
            )
    for i, call in enumerate(detail.get("upstream_calls") or (), 1):
        start = _time(call.get("started_at"))
        if start is None:
            continue
        rows.append(
            {
                "kind": "call",
                "label": f"#{i} {call['node']}"
                + (f" (attempt {call['attempt']})" if call.get("attempt", 1) > 1 else ""),
                "depth": 1,
                "start": start,
                "end": start + dt.timedelta(milliseconds=float(call.get("latency_ms") or 0.0)),
                "status": call.get("status") or "",
                "tokens": (call.get("usage") or {}).get("total_tokens"),
            }
        )
    return rows


def render_waterfall(detail: Mapping[str, Any]) -> str:
    """The waterfall as HTML (`#waterfall`, one `.wf-row` per bar), or a line saying there is no timing."""
    rows = waterfall_rows(detail)
    if not rows:
        return "<p id='no-waterfall'>This run has no recorded times.</p>"
    t0 = min(r["start"] for r in rows)
    span_ms = max(max((r["end"] - t0).total_seconds() * 1000 for r in rows), 1e-3)
    ticks = "".join(
        f"<span class='wf-tick' style='left:{f * 100:.0f}%'>{span_ms * f:.0f} ms</span>" for f in (0, 0.25, 0.5, 0.75)
    )
    out = [
        f"<div id='waterfall' data-span-ms='{span_ms:.3f}'><div class='wf-row wf-head'><span class='wf-label'>"
        f"</span><span class='wf-axis'>{ticks}</span><span class='wf-meta'>{span_ms:.0f} ms</span></div>"
    ]
    grouped = False
    for r in rows:
        if r["kind"] == "call" and not grouped:  # the calls under a heading of their own, after the tasks
            grouped = True
            out.append("<div class='wf-row wf-group'><span class='wf-label'>upstream calls</span></div>")
        start_ms = (r["start"] - t0).total_seconds() * 1000
        duration_ms = max((r["end"] - r["start"]).total_seconds() * 1000, 0.0)
        tokens = r["tokens"]
        meta = f"{duration_ms:.0f} ms" + (f" &middot; {tokens} tok" if tokens else "")
        status = escape(r["status"])
        out.append(
            f"<div class='wf-row wf-{r['kind']}' data-kind='{r['kind']}' data-name='{escape(r['label'])}' "
            f"data-start-ms='{start_ms:.3f}' data-duration-ms='{duration_ms:.3f}' data-status='{status}' "
            f"data-tokens='{tokens if tokens is not None else ''}'>"
            f"<span class='wf-label' style='padding-left:{r['depth'] * 0.9:.1f}em' title='{escape(r['label'])}'>"
            f"{escape(r['label'])}</span><span class='wf-track'><span class='wf-bar wf-bar-{r['kind']} "
            f"wf-status-{status}' style='left:{start_ms / span_ms * 100:.4f}%;width:{duration_ms / span_ms * 100:.4f}%'"
            f" title='{start_ms:.0f} ms + {duration_ms:.0f} ms, {status}'></span></span>"
            f"<span class='wf-meta'>{meta} <span class='status-{status}'>{status}</span></span></div>"
        )
    out.append("</div>")
    return "".join(out)


WATERFALL_CSS = """
#waterfall{max-width:70em;border:1px solid #dde;padding:.3em .5em;font-size:13px}
.wf-row{display:flex;align-items:center;gap:.6em;min-height:1.5em}.wf-row:hover{background:#f6f6ff}
.wf-label{flex:0 0 18em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-family:monospace}
.wf-track,.wf-axis{position:relative;flex:1 1 auto;height:1em}.wf-axis{height:1.2em;color:#666;font-size:11px}
.wf-tick{position:absolute;top:0;border-left:1px solid #ccd;padding-left:2px}
.wf-bar{position:absolute;top:.15em;height:.7em;box-sizing:border-box;background:#7f9bd9;border-radius:2px;
min-width:0}.wf-bar-run{background:#b9c3d9}.wf-bar-task{background:#8fcfa8}.wf-bar-call{background:#7f9bd9}
.wf-status-failed,.wf-status-error{background:#e57373}.wf-status-running,.wf-status-pending{background:#f0c36d}
.wf-group .wf-label{color:#666;font-family:inherit;font-style:italic}
.wf-meta{flex:0 0 13em;color:#555;font-variant-numeric:tabular-nums;white-space:nowrap}
"""
