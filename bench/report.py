#!/usr/bin/env python3
"""bench/run.sh's report: medians over rounds of its results, as a markdown table refreshed in
bench/RESULTS.md (between markers) and a PNG chart, one panel per workload.

Usage: report.py OUT_DIR RESULTS_MD CHART_PNG
OUT_DIR holds results.tsv (round, workload, contender, metric, value) and meta.txt (key=value).
"""

import os
import re
import statistics
import sys
from collections import defaultdict

CONTENDERS = ["direct", "nginx", "embedded", "redis"]
NAMES = {
    "direct": "direct to mock",
    "nginx": "nginx",
    "embedded": "keyrelay embedded",
    "redis": "keyrelay Redis",
}
WRK = [("chat64", "chat, c=64"), ("chat1", "chat, c=1"),
       ("stream64", "stream, c=64"), ("stream1", "stream, c=1")]
BEGIN = "<!-- bench/run.sh: begin (refreshed by each run) -->"
END = "<!-- bench/run.sh: end -->"


def load(out):
    rows = defaultdict(dict)  # (workload, contender, metric) -> {round: value}
    with open(os.path.join(out, "results.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5 or parts[4] == "":
                continue
            try:
                rows[(parts[1], parts[2], parts[3])][int(parts[0])] = float(parts[4])
            except ValueError:
                continue
    meta = {}
    with open(os.path.join(out, "meta.txt")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return rows, meta


class Figures:
    """Medians over rounds, and per-round differences."""

    def __init__(self, rows, meta):
        self.rows = rows
        self.meta = meta

    def med(self, w, c, m):
        v = list(self.rows.get((w, c, m), {}).values())
        return statistics.median(v) if v else None

    def med_diff(self, w, c, base, m):
        a, b = self.rows.get((w, c, m), {}), self.rows.get((w, base, m), {})
        d = [a[r] - b[r] for r in a if r in b]
        return statistics.median(d) if d else None


def fmt(v, digits=0):
    if v is None:
        return ""
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}"


def row(label, fig, vals, digits, ratios=True):
    """One table row: a figure per contender, then embedded/nginx and Redis/nginx."""
    cells = [fmt(vals.get(c), digits) for c in CONTENDERS]
    rs = ["", ""]
    if ratios:
        rs = [ratio(vals.get("embedded"), vals.get("nginx")),
              ratio(vals.get("redis"), vals.get("nginx"))]
    return f"| {label} | {fig} | " + " | ".join(cells + rs) + " |"


def wrk_rows(f, w, label):
    g = lambda m: {c: f.med(w, c, m) for c in CONTENDERS}  # noqa: E731
    rps = g("rps")
    out = [row(label, "req/s", rps, 0)]
    direct = rps.get("direct")
    out.append(row(label, "req/s / direct", {c: (v / direct if v and direct else None)
                                               for c, v in rps.items()}, 2, ratios=False))
    out.append(row(label, "p50 ms", g("p50_ms"), 3))
    out.append(row(label, "p99 ms", g("p99_ms"), 3))
    out.append(row(label, "proxy CPU µs/request", g("cpu_us_per_req"), 1))
    if w.startswith("stream"):
        out.append(row(label, "proxy CPU µs per chunk beyond chat's", extra_chunk_cpu(f, w), 2))
    with_redis = g("cpu_us_per_req")
    with_redis["redis"] = f.med(w, "redis", "cpu_with_redis_us_per_req")
    out.append(row(label, "CPU µs/request, Redis's included", with_redis, 1))
    out.append(row(label, "peak RSS MiB", {c: (v / 1024 if v else None)
                                           for c, v in g("peak_rss_kib").items()}, 1))
    out.append(row(label, "Redis script calls/request",
                   {"redis": f.med(w, "redis", "redis_calls_per_req")}, 3, ratios=False))
    out.append(row(label, "Redis script calls/attempt (upstream request)",
                   {"redis": f.med(w, "redis", "redis_calls_per_attempt")}, 3, ratios=False))
    out.append(degraded_row(f, w, label))
    return out


def extra_chunk_cpu(f, w):
    """(CPU per stream request - CPU per chat request at the same concurrency) / chunks."""
    chunks = float(f.meta.get("chunks") or 0)
    chat = "chat" + w[len("stream"):]
    out = {}
    for c in CONTENDERS:
        a, b = f.med(w, c, "cpu_us_per_req"), f.med(chat, c, "cpu_us_per_req")
        if a is not None and b is not None and chunks > 0:
            out[c] = (a - b) / chunks
    return out


def targets(f):
    """Issue 14's targets, each with its figure from this run and whether it is met."""
    m = f.med
    rps = lambda w, c: m(w, c, "rps")  # noqa: E731
    ratio_of = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    idle_mib = m("idle", "embedded", "rss_held_kib")
    rows = [
        ("stream, c=64: embedded req/s ≥ 1.0x nginx", ratio_of(rps("stream64", "embedded"),
                                                             rps("stream64", "nginx")), 1.0, ">="),
        ("stream, c=64: embedded CPU per chunk ≤ nginx's (x nginx)",
         ratio_of(extra_chunk_cpu(f, "stream64").get("embedded"),
                  extra_chunk_cpu(f, "stream64").get("nginx")), 1.0, "<="),
        ("chat, c=64: embedded req/s ≥ 1.0x nginx", ratio_of(rps("chat64", "embedded"),
                                                           rps("chat64", "nginx")), 1.0, ">="),
        ("chat, c=64: Redis req/s ≥ 0.8x nginx", ratio_of(rps("chat64", "redis"),
                                                        rps("chat64", "nginx")), 0.8, ">="),
        ("chat, c=1: embedded p50 ≤ nginx's (x nginx)",
         ratio_of(m("chat1", "embedded", "p50_ms"), m("chat1", "nginx", "p50_ms")), 1.0, "<="),
        ("stream, c=1: embedded p50 ≤ nginx's (x nginx)",
         ratio_of(m("stream1", "embedded", "p50_ms"), m("stream1", "nginx", "p50_ms")), 1.0, "<="),
        ("streams held: embedded added chunk delay p99 < 1 ms",
         f.med_diff("streams", "embedded", "direct", "delay_p99_ms"), 1.0, "<"),
        ("streams held: embedded ≤ 16 KiB per open stream",
         m("streams", "embedded", "rss_per_stream_kib"), 16.0, "<="),
        ("streams held: embedded CPU per chunk ≤ nginx's (x nginx)",
         ratio_of(m("streams", "embedded", "cpu_us_per_chunk"),
                  m("streams", "nginx", "cpu_us_per_chunk")), 1.0, "<="),
        ("chat, c=64: embedded peak RSS ≤ 20 MiB",
         (m("chat64", "embedded", "peak_rss_kib") or 0) / 1024 or None, 20.0, "<="),
        ("stream, c=64: embedded peak RSS ≤ 20 MiB",
         (m("stream64", "embedded", "peak_rss_kib") or 0) / 1024 or None, 20.0, "<="),
        (f"{f.meta.get('idle_connections')} idle connections: embedded total RSS ≤ 100 MiB",
         idle_mib / 1024 if idle_mib else None, 100.0, "<="),
        ("chat, c=64: Redis script calls per attempt ≤ 1",
         m("chat64", "redis", "redis_calls_per_attempt"), 1.0, "<="),
    ]
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    out = ["", "Targets of issue 14 (figures from this run):", "",
           "| target | this run | met |", "|---|---:|---|"]
    fallbacks = sum(f.rows.get(("chat64", "redis", "degraded"), {}).values())
    for name, value, bound, op in rows:
        if value is None:
            continue
        met = "yes" if ops[op](value, bound) else "no"
        if "Redis" in name and "chat, c=64" in name and fallbacks:
            met += f" (unsure: {fallbacks:.0f} fallbacks to local state)"
        out.append(f"| {name} | {value:,.2f} | {met} |")
    return out


def degraded_row(f, w, label):
    """How often keyrelay on Redis fell back to local state during the workload, all rounds."""
    total = sum(f.rows.get((w, "redis", "degraded"), {}).values())
    return row(label, "Redis store fallbacks to local state (sum of rounds)",
               {"redis": total}, 0, ratios=False)


def stream_rows(f):
    g = lambda m: {c: f.med("streams", c, m) for c in CONTENDERS}  # noqa: E731
    L = "streams held"
    added = {c: f.med_diff("streams", c, "direct", "delay_p50_ms") for c in CONTENDERS[1:]}
    added99 = {c: f.med_diff("streams", c, "direct", "delay_p99_ms") for c in CONTENDERS[1:]}
    with_redis = g("cpu_us_per_chunk")
    with_redis["redis"] = f.med("streams", "redis", "cpu_with_redis_us_per_chunk")
    return [
        row(L, "streams open at mid-hold", g("open_streams"), 0, ratios=False),
        row(L, "chunks delivered", g("chunks"), 0, ratios=False),
        row(L, "failed streams", g("failed_streams"), 0, ratios=False),
        row(L, "chunk delay p50 ms", g("delay_p50_ms"), 3),
        row(L, "chunk delay p99 ms", g("delay_p99_ms"), 3),
        row(L, "added delay p50 ms (vs direct)", added, 3),
        row(L, "added delay p99 ms (vs direct)", added99, 3),
        row(L, "proxy CPU µs/chunk", g("cpu_us_per_chunk"), 2),
        row(L, "CPU µs/chunk, Redis's included", with_redis, 2),
        row(L, "RSS per open stream KiB", g("rss_per_stream_kib"), 1),
        row(L, "peak RSS MiB", {c: (v / 1024 if v else None)
                                for c, v in g("peak_rss_kib").items()}, 1),
        row(L, "Redis script calls/stream",
            {"redis": f.med("streams", "redis", "redis_calls_per_stream")}, 3, ratios=False),
        degraded_row(f, "streams", L),
    ]


def idle_rows(f):
    g = lambda m: {c: f.med("idle", c, m) for c in CONTENDERS}  # noqa: E731
    L = "idle connections"
    return [
        row(L, "connections held", g("open_connections"), 0, ratios=False),
        row(L, "still open after the hold", g("still_open"), 0, ratios=False),
        row(L, "RSS idle MiB", {c: (v / 1024 if v else None)
                                for c, v in g("rss_idle_kib").items()}, 1),
        row(L, "RSS holding them MiB (total)", {c: (v / 1024 if v else None)
                                                for c, v in g("rss_held_kib").items()}, 1),
        row(L, "RSS per connection KiB", g("rss_per_conn_kib"), 2),
        degraded_row(f, "idle", L),
    ]


def markdown(f, meta, chart_name):
    workloads = {w for (w, _, _) in f.rows}
    lines = [BEGIN, "", f"### Four contenders side by side: {meta.get('date', '')}"]
    if meta.get("note"):
        lines += ["", f"**{meta['note'].strip()}**"]
    if meta.get("features") == "1":
        lines += ["", "**Both keyrelays with features on** (`BENCH_FEATURES=1`): resource "
                  "affinity, the client in a tenant with its own keys, request and token limits "
                  "on the client and the tenant, token metering on the keys; stream requests "
                  "(every contender's) ask for usage."]
    lines += [
        "",
        f"Machine: {meta.get('nproc')} CPUs ({meta.get('cpu')}), {meta.get('kernel')}; "
        f"{meta.get('rustc')}, nginx {meta.get('nginx')}, redis {meta.get('redis')}, "
        f"wrk {meta.get('wrk')}; git {meta.get('git')}; open-file limit {meta.get('nofile')}.",
        "",
        f"Command: `{meta.get('command')}` ({meta.get('elapsed_s')} s measured). "
        f"{meta.get('rounds')} rounds, interleaved (every workload runs on each contender in "
        "turn, the order rotated each round); figures are medians over rounds, ratios are "
        "ratios of medians. wrk: "
        f"{meta.get('seconds')} s per run after {meta.get('warmup')} s warm-up, -t "
        f"{meta.get('threads')}, ~1 KB JSON body, stream = {meta.get('chunks')} SSE chunks "
        f"with no delay. Streams held: {meta.get('streams')} slots of "
        f"{meta.get('stream_chunks')} chunks {meta.get('stream_delay_ms')} ms apart, opened "
        f"over {meta.get('stream_ramp')} s, held {meta.get('stream_hold')} s. Idle: "
        f"{meta.get('idle_connections')} keep-alive connections after one request each.",
        "",
        "| workload | figure | " + " | ".join(NAMES[c] for c in CONTENDERS)
        + " | embedded / nginx | Redis / nginx |",
        "|---|---|" + "---:|" * (len(CONTENDERS) + 2),
    ]
    for w, label in WRK:
        if w in workloads:
            lines += wrk_rows(f, w, label)
    if "streams" in workloads:
        lines += stream_rows(f)
    if "idle" in workloads:
        lines += idle_rows(f)
    lines += targets(f)
    lines += [
        "",
        "Proxy CPU is utime+stime from /proc/PID/stat over the measured window (nginx: master "
        "and workers) divided by the requests or chunks delivered; for streams it includes "
        "each stream's request; \"per chunk beyond chat's\" is (stream's CPU per request − "
        "chat's) / chunks per stream. \"Redis's included\" adds redis-server's own CPU. Peak RSS is "
        "VmHWM, reset before each run (clear_refs), summed over nginx's processes. RSS per open "
        "stream is (RSS at mid-hold − RSS before) / streams open then; per idle connection "
        "likewise; every workload starts on freshly started processes. A Redis store "
        "fallback is keyrelay logging that Redis did not answer within its timeout and serving "
        "on local state: with any, the Redis column is partly the embedded store's figure. Chunk delay is arrival at the client minus the mock's send stamp; "
        "\"added\" is the contender's minus direct's in the same round. Everything (load "
        "client, mock, proxy, Redis) shares the same CPUs.",
        "",
        f"![req/s and CPU per request per contender]({chart_name})",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def refresh(path, section):
    text = open(path).read() if os.path.exists(path) else "# Results\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n## bench/run.sh: four contenders side by side\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def bars(ax, f, w, left, right, left_label, right_label, stack=None, scale=1.0):
    """Bars of `left` (left axis, times `scale`) and `right` (right axis) per contender;
    `stack` adds a hatched segment on top of the right bar (Redis's own CPU)."""
    xs = list(range(len(CONTENDERS)))
    lv = [(f.med(w, c, left) or 0) * scale for c in CONTENDERS]
    rv = [f.med(w, c, right) or 0 for c in CONTENDERS]
    sv = [(f.med(w, c, stack) or 0) if stack else 0 for c in CONTENDERS]
    h1 = ax.bar([x - 0.2 for x in xs], lv, 0.4, color="#4c72b0", label=left_label)
    ax.set_ylabel(left_label, color="#4c72b0", fontsize=8)
    ax2 = ax.twinx()
    h2 = ax2.bar([x + 0.2 for x in xs], rv, 0.4, color="#dd8452", label=right_label)
    handles = [h1, h2]
    if stack and any(sv):
        handles.append(ax2.bar([x + 0.2 for x in xs], sv, 0.4, bottom=rv, color="#f4c7a8",
                               hatch="//", edgecolor="#dd8452", label="+ redis-server CPU"))
    ax2.set_ylabel(right_label, color="#dd8452", fontsize=8)
    # Headroom for the labels and the legend above the bars.
    ax.set_ylim(0, max(lv + [1e-9]) * 1.35)
    ax2.set_ylim(0, max([a + b for a, b in zip(rv, sv)] + [1e-9]) * 1.35)
    ax.set_xticks(xs)
    ax.set_xticklabels(["direct", "nginx", "keyrelay\nembedded", "keyrelay\nRedis"], fontsize=8)
    for x, v in zip(xs, lv):
        if v:
            ax.text(x - 0.2, v, f"{v:,.0f}" if v >= 10 else f"{v:.2f}", ha="center",
                    va="bottom", fontsize=7, color="#4c72b0")
    for x, v, extra in zip(xs, rv, sv):
        if v:
            text = f"{v:.1f}" + (f"\n+{extra:.1f}" if extra else "")
            ax2.text(x + 0.2, v + extra, text, ha="center", va="bottom", fontsize=7,
                     color="#a0522d")
    ax.legend(handles=handles, loc="upper left", fontsize=7, ncol=2,
              frameon=False)


def chart(f, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = {w for (w, _, _) in f.rows}
    panels = [w for w, _ in WRK if w in workloads]
    panels += [w for w in ("streams", "idle") if w in workloads]
    cols = 3 if len(panels) > 4 else 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    labels = dict(WRK)
    for ax, w in zip(axes.flat, panels):
        if w == "streams":
            bars(ax, f, w, "delay_p99_ms", "cpu_us_per_chunk", "chunk delay p99 ms",
                 "proxy CPU µs/chunk", stack="redis_cpu_us_per_chunk")
            ax.set_title(f"{meta.get('streams')} streams held, {meta.get('stream_chunks')} "
                         f"chunks {meta.get('stream_delay_ms')} ms apart", fontsize=9)
        elif w == "idle":
            bars(ax, f, w, "rss_held_kib", "rss_per_conn_kib", "RSS holding them MiB",
                 "RSS KiB per connection", scale=1 / 1024)
            ax.set_title(f"{meta.get('idle_connections')} idle keep-alive connections",
                         fontsize=9)
        else:
            bars(ax, f, w, "rps", "cpu_us_per_req", "req/s", "proxy CPU µs/request",
                 stack="redis_cpu_us_per_req")
            ax.set_title(labels[w], fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    note = (meta.get("note") or "").strip()
    fig.suptitle(f"keyrelay bench/run.sh, {meta.get('date')}, medians of {meta.get('rounds')} "
                 f"rounds{', ' + note if note else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    out, results_md, chart_png = sys.argv[1:4]
    rows, meta = load(out)
    f = Figures(rows, meta)
    section = markdown(f, meta, os.path.basename(chart_png))
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(section)
    refresh(results_md, section)
    chart(f, meta, chart_png)
    sys.stdout.write(section)


if __name__ == "__main__":
    main()
