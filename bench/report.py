"""Renders the bench results (a JSON-able dict) as a markdown report."""

import math
from typing import Any

PUBLISHED = [("Hatchet", 1.22), ("Windmill", 2.09), ("Temporal", 2.97), ("Prefect 2", 4.87)]
MODES = ("inline", "prefect")
BASELINE_LABEL = {
    "plain": "baseline: plain asyncio (no I/O)",
    "durable": "baseline: + 1 SQLite commit/node",
    "naive-prefect": "baseline: naive Prefect",
    "inline": "**service, inline mode**",
    "prefect": "**service, prefect mode**",
}


def base(target: str) -> str:
    return target.split(":", 1)[0]


def label(target: str, row: Any = None) -> str:
    if ":" in target:
        mode, settings = target.split(":", 1)
        text = f"service, {mode} mode ({settings.replace('+', ', ')})"
    else:
        text = BASELINE_LABEL.get(target, target)
    used = row.get("modes_used") if isinstance(row, dict) else None
    if used:
        other = {m: n for m, n in used["counts"].items() if m not in (base(target), "-")}
        if other:
            text += " ⚠ ran as " + ", ".join(f"{m} ×{n}" for m, n in other.items())
    return text


def f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10 or digits == 0:
            text = f"{value:.{max(0, digits - 1) if abs(value) >= 10 else digits}f}"
        else:
            text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text + unit


def ratio(a: float | None, b: float | None, digits: int = 1) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}×"


def met(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def order(targets: list[str]) -> list[str]:
    rank = ["inline", "prefect", "naive-prefect", "plain", "durable"]
    return sorted(targets, key=lambda t: (rank.index(base(t)) if base(t) in rank else 99, t))


def _err(row: dict[str, Any] | None) -> str | None:
    if not isinstance(row, dict):
        return "not run"
    if row.get("error") and len(row) <= 3:
        return str(row["error"])[:160]
    return None


def w1_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| target | 40 × addField: total ms | ms/node (node phase) | × plain | "
        "40 × http 10 ms: total s | overhead ms/node (− 10 ms) | vs Hatchet 1.22 s | "
        "target | met |",
        "|" + "---|" * 9,
    ]
    plain = get(res, "plain", "noop", "phase_s")
    for t in order(list(res)):
        row = res[t]
        if (e := _err(row)) is not None:
            lines.append(f"| {label(t)} | {e} |" + " |" * 7)
            continue
        noop, http = row.get("noop", {}), row.get("http", {})
        n = noop.get("nodes") or 40
        per = noop["phase_s"] * 1000 / n if noop.get("phase_s") is not None else None
        hn = http.get("nodes") or 40
        h_total = http.get("total_s")
        h_phase = http.get("phase_s")
        h_over = (h_phase * 1000 / hn - 10) if h_phase is not None else None
        target, ok = "", None
        if base(t) == "inline":
            target = "≤ 0.5 ms/node"
        elif base(t) == "prefect":
            target = "≤ 10 ms/node"
        if target and per is not None and h_over is not None:
            limit = 0.5 if base(t) == "inline" else 10
            ok = per <= limit and h_over <= limit
        incomplete = ""
        if noop.get("completed", 1) < noop.get("runs", 1) or http.get("completed", 1) < http.get(
            "runs", 1
        ):
            incomplete = f" (runs: {noop.get('statuses')}, {http.get('statuses')})"
        lines.append(
            f"| {label(t, row)}{incomplete} | {f(noop.get('total_s') and noop['total_s'] * 1000)} | "  # noqa: E501
            f"{f(per, 2)} | {ratio(per, plain and plain * 1000 / n)} | {f(h_total, 2)} | "
            f"{f(h_over, 2)} | {ratio(h_total, 1.22, 2)} | {target or '–'} | {met(ok)} |"
        )
    lines.append("")
    lines.append(
        "40 × ~10 ms tasks, total seconds (published figures vs this run's http workflow):"
    )  # noqa: E501
    lines.append("")
    lines.append("| system | 40 × ~10 ms tasks (s) |")
    lines.append("|---|---|")
    for name, secs in PUBLISHED:
        lines.append(f"| {name} (published) | {secs:.2f} |")
    for t in order(list(res)):
        total = get(res, t, "http", "total_s")
        if total is not None:
            lines.append(f"| {label(t)} (this run) | {total:.2f} |")
    return lines


def w2_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| target | c=1 exec/s | c=1 e2e p50 / p99 ms | c=50 exec/s | % of durable c=50 | "
        "× naive c=50 | c=50 submit p50 / p99 ms | c=50 e2e p50 / p99 ms | "
        "CPU ms per execution (c=50) | target | met |",
        "|" + "---|" * 11,
    ]
    durable = get(res, "durable", "c50", "exec_s")
    naive = get(res, "naive-prefect", "c50", "exec_s")
    for t in order(list(res)):
        row = res[t]
        if (e := _err(row)) is not None:
            lines.append(f"| {label(t)} | {e} |" + " |" * 9)
            continue
        c1, c50 = row.get("c1", {}), row.get("c50", {})
        x = c50.get("exec_s")
        cpu = c50.get("cpu_ms_per_exec") or {}
        cpu_text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items()) if v >= 0.05) or "–"
        target, ok = "–", None
        if base(t) == "inline" and x is not None and durable:
            target, ok = "≥ 25% of durable", x >= 0.25 * durable
        elif base(t) == "prefect" and x is not None:
            target = "≥ 40/s and ≥ 5× naive"
            ok = x >= 40 and (naive is None or x >= 5 * naive)
        pct = f"{100 * x / durable:.0f}%" if x is not None and durable else "–"

        def lat(d: dict[str, Any], key: str) -> str:
            s = d.get(key) or {}
            return f"{f(s.get('p50'))} / {f(s.get('p99'))}" if s.get("n") else "–"

        extra = ""
        if c50.get("failed") or c50.get("unfinished") or c50.get("submit_errors"):
            extra = (
                f" ({c50.get('completed')} ok, {c50.get('failed')} failed, "
                f"{c50.get('unfinished')} unfinished, {c50.get('submit_errors')} submit errors)"
            )  # noqa: E501
        lines.append(
            f"| {label(t, row)} | {f(c1.get('exec_s'))} | {lat(c1, 'e2e_ms')} | {f(x)}{extra} | {pct} | "  # noqa: E501
            f"{ratio(x, naive)} | {lat(c50, 'submit_ms')} | {lat(c50, 'e2e_ms')} | {cpu_text} | "
            f"{target} | {met(ok)} |"
        )
    lines += [
        "",
        "Open loop: submissions at a fixed rate regardless of answers (submit latency is "
        "POST → 200 with the execution id):",
        "",
        "| target | offered | achieved rate /s | submit p50 / p99 / max ms | submit errors | "
        "completed (drain window) | exec/s while draining | target | met |",
        "|" + "---|" * 9,
    ]
    for t in order(list(res)):
        o = get(res, t, "open")
        if not o:
            continue
        s = o.get("submit_ms") or {}
        p99 = s.get("p99")
        ok = (
            (p99 is not None and p99 < 10 and not o.get("submit_errors"))
            if base(t) in MODES
            else None
        )  # noqa: E501
        lines.append(
            f"| {label(t, res[t])} | {o['offered']} at {o['rate']:.0f}/s | {f(o.get('achieved_rate'))} | "  # noqa: E501
            f"{f(s.get('p50'))} / {f(p99)} / {f(s.get('max'))} | {o.get('submit_errors')} | "
            f"{o.get('completed')} of {o['offered']} in {f(o.get('drain_s'))} s | "
            f"{f(o.get('exec_s'))} | {'p99 < 10 ms' if base(t) in MODES else '–'} | {met(ok)} |"
        )
    return lines


def w3_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| target | executions | completed / failed / unfinished | total s | × ideal | "
        "peak RSS MB (sum of processes) | peak RSS by process MB | target | met |",
        "|" + "---|" * 9,
    ]
    for t in order(list(res)):
        row = res[t]
        if (e := _err(row)) is not None:
            lines.append(f"| {label(t)} | {e} |" + " |" * 7)
            continue
        ideal = row.get("ideal_s") or 0.5
        a = row.get("alone") or {}
        st = a.get("statuses") or {}
        total = a.get("elapsed")
        peak = a.get("peak_mb")
        by = ", ".join(f"{k} {v:.0f}" for k, v in sorted((a.get("peak_by_role_mb") or {}).items()))
        ok, target = None, "–"
        if base(t) in MODES:
            target = "≤ 1.3× ideal, < 500 MB"
            ok = (
                total is not None
                and a.get("complete")
                and total <= 1.3 * ideal
                and peak is not None
                and peak < 500
            )
        fails = f" ({a['failed_sample'][:80]})" if a.get("failed_sample") else ""
        lines.append(
            f"| {label(t, row)} | {a.get('executions')} | {st.get('completed', 0)} / "
            f"{st.get('failed', 0)}{fails} / {a.get('unfinished', 0)} | {f(total, 2)} | "
            f"{ratio(total, ideal)} | {f(peak, 0)} | {by or '–'} | {target} | {met(ok)} |"
        )
    return lines


def w4_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| target | pollers | GET /api/executions/{id} per s | p50 ms | p99 ms | errors / "
        "non-200 | W3 total under polling s | × ideal | peak RSS MB |",
        "|" + "---|" * 9,
    ]
    for t in order(list(res)):
        row = get(res, t, "polled")
        if not row:
            continue
        poll = row.get("poll") or {}
        lat = poll.get("latency_ms") or {}
        codes = poll.get("codes") or {}
        non200 = sum(v for k, v in codes.items() if str(k) != "200")
        ideal = get(res, t, "ideal_s") or 0.5
        lines.append(
            f"| {label(t, res[t])} | {poll.get('concurrency')} | {f(poll.get('rps'))} | "
            f"{f(lat.get('p50'))} | {f(lat.get('p99'))} | {poll.get('errors')} / {non200} | "
            f"{f(row.get('elapsed'), 2)} | {ratio(row.get('elapsed'), ideal)} | "
            f"{f(row.get('peak_mb'), 0)} |"
        )
    return lines


def w5_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| target | rows (A + B) | input source | status | time s | × plain | peak RSS MB | "
        "target | met |",
        "|" + "---|" * 9,
    ]
    plain = get(res, "plain", "elapsed")
    for t in order(list(res)):
        row = res[t]
        if t == "ladder":
            continue
        if (e := _err(row)) is not None:
            lines.append(f"| {label(t)} | {e} |" + " |" * 7)
            continue
        status = row.get("status")
        if status in ("timeout", "unfinished"):
            status = f"not finished in {row.get('timeout_s')} s"
        elif status == "failed" and row.get("error"):
            status = f"failed: {row['error'][:100]}"
        ok, target = None, "–"
        if base(t) in MODES:
            target = "< 10 s, < 1 GB"
            ok = (
                row.get("status") == "completed"
                and row.get("elapsed") is not None
                and row["elapsed"] < 10
                and (row.get("peak_mb") or 0) < 1024
            )
        rows = row.get("rows")
        lines.append(
            f"| {label(t, row)} | {rows:,} + {rows:,} | {row.get('source')} | {status} | "
            f"{f(row.get('elapsed'), 2)} | {ratio(row.get('elapsed'), plain)} | "
            f"{f(row.get('peak_mb'), 0)} | {target} | {met(ok)} |"
            if rows
            else f"| {label(t)} | – | – | {status} | – | – | – | {target} | {met(ok)} |"
        )
    ladder = get(res, "ladder", "ladder")
    if ladder:
        lines += [
            "",
            "Size ladder of the same graph in the plain baseline (where the time goes "
            "as rows grow; the join is the dominant node):",
            "",
            "| rows (A + B) | time s | growth vs previous |",
            "|---|---|---|",
        ]
        prev = None
        for step in ladder:
            growth = ratio(step["elapsed"], prev[1]) if prev else "–"
            lines.append(
                f"| {step['rows']:,} + {step['rows']:,} | {step['elapsed']:.2f} | {growth} |"
            )
            prev = (step["rows"], step["elapsed"])
        if len(ladder) >= 2:
            (n1, t1), (n2, t2) = (
                (ladder[0]["rows"], ladder[0]["elapsed"]),
                (ladder[-1]["rows"], ladder[-1]["elapsed"]),
            )
            if t1 > 0 and t2 > 0 and n2 > n1:
                k = math.log(t2 / t1) / math.log(n2 / n1)
                target_rows = get(res, "plain", "rows") or 100000
                lines.append("")
                lines.append(
                    f"Measured growth exponent {k:.2f} (time ∝ rows^{k:.2f}, first to last "
                    f"step). Extrapolated to {target_rows:,} + {target_rows:,} rows: "
                    f"≈ {t2 * (target_rows / n2) ** k:,.0f} s at the measured exponent, "
                    f"≈ {t2 * (target_rows / n2) ** 2:,.0f} s if quadratic."
                )
    return lines


def profile_section(profiles: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for label_, procs in profiles.items():
        lines += [f"### {label_}", ""]
        for name, summary in procs.items():
            if "error" in summary:
                lines.append(f"- {name}: {summary['error']}")
                continue
            lines += [
                f"**{name}** ({summary['samples']} samples; own time by package: "
                + ", ".join(f"{p} {v}%" for p, v in summary["own_by_package"][:8])
                + ")",
                "",
                "| own % | function |",
                "|---|---|",
            ]
            lines += [f"| {v} | `{fn}` |" for fn, v in summary["top_own"][:12]]
            lines += ["", "| inclusive % | function |", "|---|---|"]
            lines += [f"| {v} | `{fn}` |" for fn, v in summary["top_inclusive"][:25]]
            lines.append("")
    return lines


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{results['command']}` on {m['date']} "
        f"({'QUICK smoke run: tiny sizes, numbers meaningless' if results['quick'] else 'full run'}).",  # noqa: E501
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} × {m['nproc']} cores (nproc {m['nproc']})",
        f"- RAM: {m['ram_gb']:.1f} GB",
        f"- Python {m['python']}, Prefect {m['prefect']}, SQLite {m['sqlite']}",
        f"- Service code: {m['git']}",
        f"- Load average before / after: {m['load_before']} / {m.get('load_after', '?')}"
        " — the machine is shared with other sessions running tests, so figures are noisy "
        "(±30 % is normal between runs); compare rows within a table, all measured in this run.",
        f"- Wall time of the whole run: {results.get('wall_s', 0):.0f} s",
        "",
        "## How it was measured",
        "",
        "- Service rows: `start_service.py` started as `./start.sh` would (venv python, own "
        "process group, free API_PORT, fresh DATABASE_PATH and PREFECT_HOME in a temp dir, "
        "EXECUTION_MODE per row, LOG_LEVEL=WARNING, every other setting at its default: "
        "1 worker process, MAX_CONCURRENT_EXECUTIONS 500 inline / 50 prefect, "
        "PREFECT_TASK_NODES=all). Executions are submitted as "
        '`POST /api/workflows/execute {"workflowId"}` of workflows stored in the `workflows` '
        "table; completion is detected in bulk by reading the service's SQLite file (read-only) "
        "every 5–10 ms, so detection does not load the API.",
        "- e2e = POST sent → terminal status observed. W1 ms/node uses the service's own "
        "`startedAt → completedAt` (ms resolution) / nodes, i.e. without queueing/flow-start "
        "cost; the totals include everything.",
        "- Baselines run the same graphs through the service's engine (`flows.engine.execute`) "
        "with the same handlers (`tasks.run_node.run_attempt`) in one process: plain = a "
        "recorder that writes nothing; durable = one SQLite commit per checkpoint (log rows "
        "with the output + execution row update, WAL, synchronous=NORMAL); naive Prefect = "
        "`bench/naive_prefect.py` (one @flow per execution, one @task per node, awaited in the "
        "API's event loop, status in memory) on the embedded Prefect server "
        "(`python -m flows.prefect_server`).",
        "- The local upstream (`bench/mockserver.py`) is a separate asyncio process answering "
        "after 10 ms (W1) or 100 ms (W3), keep-alive. The load generator and pollers use a "
        "minimal keep-alive HTTP client (`bench/client.py`); W4's pollers run in their own "
        "process. Every request loop is bounded in count and time; all traffic is on 127.0.0.1.",
        "- Peak RSS = the highest sum of RSS over every process of the target's process group, "
        "sampled every 100 ms from /proc (baselines: the subprocess's ru_maxrss).",
        "",
    ]
    lines += ["## Targets", ""]
    lines += [f"- {t}" for t in results.get("target_summary", [])] + [""]
    sections = [
        ("W1 — per-node overhead", "W1", w1_table),
        ("W2 — throughput (10-node no-op workflow: trigger + 9 addField)", "W2", w2_table),
        (
            "W3 — I/O fan-out (executions × trigger → 5 http nodes in a chain, upstream "
            "answers in 100 ms; ideal = 5 × 100 ms = 0.5 s)",
            "W3",
            w3_table,
        ),
        (
            "W4 — polling under load (GET status flat out from a separate process while W3 "
            "runs again)",
            "W3",
            w4_table,
        ),
        (
            "W5 — big data (excelInput A + excelInput B → join mergeByKey → splitColumns → output)",
            "W5",
            w5_table,
        ),
    ]
    for title, key, fn in sections:
        lines += [f"## {title}", ""]
        if key in results["workloads"]:
            lines += fn(results["workloads"][key])
        else:
            lines.append("(not run)")
        lines.append("")
    notes = results.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if results.get("profiles"):
        lines += ["## Profiles (py-spy --gil, W2 at concurrency 50)", ""]
        lines += profile_section(results["profiles"])
    return "\n".join(lines) + "\n"


def target_summary(results: dict[str, Any]) -> list[str]:
    """One line per issue target with the measured figure."""
    w = results["workloads"]
    out = []
    durable = get(w, "W2", "durable", "c50", "exec_s")
    naive = get(w, "W2", "naive-prefect", "c50", "exec_s")
    inline = get(w, "W2", "inline", "c50", "exec_s")
    prefect = get(w, "W2", "prefect", "c50", "exec_s")

    def mark(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "NOT met")

    for group, rows in w.items():
        for t, row in rows.items():
            used = row.get("modes_used") if isinstance(row, dict) else None
            other = {
                m: n for m, n in (used or {}).get("counts", {}).items() if m not in (base(t), "-")
            }
            if other:
                out.append(
                    f"**{t} {group} is not a {base(t)}-mode measurement**: executions ran "
                    f"as {other} ({used.get('fallback_reason')})"
                )

    if inline is not None and durable:
        out.append(
            f"inline W2 c=50 ≥ 25% of durable limit: {inline:.1f}/s = "
            f"{100 * inline / durable:.0f}% of {durable:.0f}/s — "
            f"{mark(inline >= 0.25 * durable)}"
        )
    for mode, limit in (("inline", 0.5), ("prefect", 10.0)):
        noop = get(w, "W1", mode, "noop")
        http = get(w, "W1", mode, "http")
        if noop and noop.get("phase_s") is not None:
            per = noop["phase_s"] * 1000 / noop["nodes"]
            over = (
                (http["phase_s"] * 1000 / http["nodes"] - 10)
                if http and http.get("phase_s") is not None
                else None
            )
            ok = per <= limit and (over is None or over <= limit)
            out.append(
                f"{mode} W1 ≤ {limit:g} ms/node: addField {per:.2f} ms/node, http overhead "
                f"{f(over, 2)} ms/node — {mark(ok)}"
            )
    if prefect is not None:
        ok = prefect >= 40 and (naive is None or prefect >= 5 * naive)
        out.append(
            f"prefect W2 c=50 ≥ 40/s and ≥ 5× naive: {prefect:.1f}/s, naive "
            f"{f(naive)}/s ({ratio(prefect, naive)}) — {mark(ok)}"
        )
    for mode in MODES:
        o = get(w, "W2", mode, "open")
        if o:
            p99 = get(o, "submit_ms", "p99")
            ok = p99 is not None and p99 < 10 and not o.get("submit_errors")
            out.append(f"{mode} submit p99 < 10 ms at {o['rate']:.0f}/s: {f(p99)} ms — {mark(ok)}")
    for mode in MODES:
        a = get(w, "W3", mode, "alone")
        if a:
            ideal = get(w, "W3", mode, "ideal_s") or 0.5
            total, peak = a.get("elapsed"), a.get("peak_mb")
            ok = bool(
                a.get("complete")
                and total is not None
                and total <= 1.3 * ideal
                and peak is not None
                and peak < 500
            )
            out.append(
                f"{mode} W3 ≤ 1.3× ideal and < 500 MB: {f(total, 2)} s = "
                f"{ratio(total, ideal)} ideal, {f(peak, 0)} MB"
                f"{'' if a.get('complete') else ' (not all completed)'} — {mark(ok)}"
            )
    for mode in MODES:
        r = get(w, "W5", mode)
        if isinstance(r, dict) and "status" in r:
            ok = (
                r.get("status") == "completed"
                and (r.get("elapsed") or 1e9) < 10
                and (r.get("peak_mb") or 0) < 1024
            )
            what = (
                f"{r['elapsed']:.2f} s"
                if r.get("elapsed") is not None
                else f"not finished in {r.get('timeout_s')} s"
            )
            out.append(
                f"{mode} W5 < 10 s and < 1 GB ({r.get('rows'):,} rows per input): {what}, "
                f"{f(r.get('peak_mb'), 0)} MB — {mark(ok)}"
            )
    return out
