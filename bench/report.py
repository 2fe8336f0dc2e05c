#!/usr/bin/env python3
"""Turns the raw files bench/run.sh leaves in its work directory into the markdown
report (table, targets, per-round numbers, machine). Usage: report.py WORKDIR"""

import glob
import json
import os
import re
import statistics
import sys

ROWS = {
    1: "direct to the upstream (the ceiling; plain HTTP)",
    2: "nginx reverse proxy, no auth",
    3: "nginx `auth_basic`, bcrypt cost 10",
    4: "Caddy `basicauth`, same bcrypt hash",
    5: "sallyport, public route",
    6: "sallyport, Basic (same htpasswd file)",
    7: "sallyport, RS256 Bearer",
    8: "sallyport, Basic during a wrong-password flood",
}

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_duration_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(text):
    out = {"rps": None, "p50": None, "p99": None, "requests": 0, "non2xx": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, text, re.M)
        if m:
            out[key] = parse_duration_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    if out["requests"] == 0:
        out["p50"] = out["p99"] = None
    return out


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return default


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_rps(v):
    if v is None:
        return "—"
    return "{:,.0f}".format(v) if v >= 100 else "{:.1f}".format(v)


def fmt_ms(v):
    if v is None:
        return "—"
    if v >= 1000:
        return "{:.2f} s".format(v / 1000)
    if v >= 10:
        return "{:.0f} ms".format(v)
    return "{:.2f} ms".format(v)


def fmt_us(v):
    if v is None:
        return "—"
    return "{:.0f} µs".format(v) if v < 1000 else "{:.1f} ms".format(v / 1000)


def fmt_mib(kib):
    return "—" if kib is None else "{:.1f} MiB".format(kib / 1024)


def fmt_ratio(v):
    if v is None:
        return "—"
    if 0 < v < 0.01:
        return "1/{:,.0f}".format(1 / v)
    if v >= 100:
        return "{:,.0f}x".format(v)
    if v >= 10:
        return "{:.1f}x".format(v)
    return "{:.2f}x".format(v)


def main():
    work = sys.argv[1]
    meta = {}
    for line in (read(os.path.join(work, "meta.tsv"), "") or "").splitlines():
        key, _, value = line.partition("\t")
        meta[key] = value

    samples = {row: [] for row in ROWS}   # row -> list of dicts (one per round)
    failures = {row: [] for row in ROWS}
    floods = []
    for path in sorted(glob.glob(os.path.join(work, "r*-row*.wrk"))):
        m = re.search(r"r(\d+)-row(\d+)\.wrk$", path)
        rnd, row = int(m.group(1)), int(m.group(2))
        s = parse_wrk(read(path, ""))
        s["round"] = rnd
        rss = read(path[:-4] + ".rss")
        s["rss"] = int(rss) if rss and rss.strip().isdigit() else None
        cpu = (read(path[:-4] + ".cpu") or "").split()
        s["cpu_us"] = None
        if len(cpu) == 2 and all(x.isdigit() for x in cpu) and int(cpu[1]) and s["requests"]:
            s["cpu_us"] = int(cpu[0]) / int(cpu[1]) * 1e6 / s["requests"]
        if row == 8:
            flood = read(path[:-4] + ".flood.json")
            s["flood"] = json.loads(flood) if flood else None
            if s["flood"]:
                floods.append(s["flood"])
        samples[row].append(s)
    for path in sorted(glob.glob(os.path.join(work, "r*-row*.err"))):
        m = re.search(r"r(\d+)-row(\d+)\.err$", path)
        failures[int(m.group(2))].append("round %s: %s" % (m.group(1), read(path, "").strip()))

    med = {}
    for row, ss in samples.items():
        med[row] = {
            "rps": median([s["rps"] for s in ss]),
            "p50": median([s["p50"] for s in ss]),
            "p99": median([s["p99"] for s in ss]),
            "rss": median([s["rss"] for s in ss]),
            "cpu": median([s["cpu_us"] for s in ss]),
            "non2xx": sum(s["non2xx"] for s in ss),
            "errors": sum(s["errors"] for s in ss),
            "requests": sum(s["requests"] for s in ss),
            "n": len([s for s in ss if s["rps"] is not None]),
        }
    base = med[2]["rps"]

    idle = {}
    for name in ("sallyport", "nginx"):
        raw = read(os.path.join(work, "idle-%s.json" % name))
        idle[name] = json.loads(raw) if raw else None
    idle_err = read(os.path.join(work, "idle.err"), "").strip()

    o = []
    o.append("# sallyport benchmark results")
    o.append("")
    o.append("Run %s with `bench/run.sh` (%s)." % (meta.get("date", "?"), meta.get("settings", "")))
    o.append("")
    o.append("Machine: %s CPUs (%s), %s RAM, Linux %s, %s. "
             "Versions: %s; %s; %s; %s; sallyport %s (commit %s)." % (
                 meta.get("nproc", "?"), meta.get("cpu", "?"), meta.get("ram", "?"),
                 meta.get("kernel", "?"), meta.get("os", "?"), meta.get("nginx", "?"),
                 meta.get("caddy", "?"), meta.get("wrk", "?"), meta.get("rustc", "?"),
                 meta.get("sallyport", "?"), meta.get("commit", "?")))
    o.append("")
    o.append("Every server, the load generator and the shared upstream share the same CPUs, so "
             "absolute numbers are this machine's; compare the ratios. Numbers are medians over "
             "the rounds; rows were interleaved in rotated order within each round.")
    o.append("")
    o.append("Machine state: %s; other work on the machine shows up as drift between rounds "
             "(see \"Every round\")." % meta.get("load", "?"))
    o.append("")
    o.append("| # | setup | requests/s | p50 | p99 | CPU per request | peak RSS | vs row 2 | notes |")
    o.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row, title in ROWS.items():
        m = med[row]
        notes = []
        if m["n"] == 0:
            notes.append("did not run" + (": " + "; ".join(failures[row]) if failures[row] else ""))
        elif failures[row]:
            notes.append("; ".join(failures[row]))
        if m["non2xx"]:
            notes.append("%d non-2xx of %d" % (m["non2xx"], m["requests"]))
        if m["errors"]:
            notes.append("%d socket errors/timeouts" % m["errors"])
        if row == 1:
            notes.append("RSS: the upstream nginx")
        if row in (2, 3):
            notes.append("RSS: master + workers")
        if row == 8:
            notes.append("CPU includes refusing the flood")
        if row == 3 and meta.get("row3_duration"):
            notes.append("wrk ran %s s: the first answers take seconds" % meta["row3_duration"])
        if row == 8 and floods:
            f401 = sum(f["status"].get("401", 0) for f in floods)
            f429 = sum(f["status"].get("429", 0) for f in floods)
            fother = sum(v for f in floods for k, v in f["status"].items() if k not in ("401", "429"))
            ferr = sum(sum(f["errors"].values()) for f in floods)
            fsrc = floods[0]["sources"] if floods else 0
            notes.append("flood (all rounds): %d x 401, %d x 429, %d other, %d conn errors, from %d addresses"
                         % (f401, f429, fother, ferr, fsrc))
        ratio = m["rps"] / base if (m["rps"] is not None and base) else None
        o.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row, title, fmt_rps(m["rps"]), fmt_ms(m["p50"]), fmt_ms(m["p99"]),
            fmt_us(m["cpu"]), fmt_mib(m["rss"]), fmt_ratio(ratio), "; ".join(notes)))

    per_conn = {}
    for name, label in (("sallyport", "sallyport (public route)"), ("nginx", "nginx (as row 2)")):
        r = idle[name]
        if r and r.get("per_connection_bytes") is not None:
            per_conn[name] = r["per_connection_bytes"]
    for name, label in (("sallyport", "sallyport, public route"), ("nginx", "nginx, as row 2")):
        r = idle[name]
        if not r:
            o.append("| 9 | %d idle TLS keep-alive connections: %s | — | — | — | — | not measured | — | %s |"
                     % (int(meta.get("idle_count", "0") or 0), label, idle_err or "did not run"))
            continue
        delta = r["rss_after_kib"] - r["rss_before_kib"]
        pc = r.get("per_connection_bytes")
        ratio = (pc / per_conn["nginx"]) if (name == "sallyport" and pc is not None and per_conn.get("nginx")) else None
        note = "%d opened, %d still open when measured; RSS %s -> %s" % (
            r["opened"], r["alive"], fmt_mib(r["rss_before_kib"]), fmt_mib(r["rss_after_kib"]))
        if r.get("errors"):
            note += "; errors %s" % r["errors"]
        o.append("| 9 | %d idle TLS keep-alive connections: %s | — | — | — | — | +%s = %s/conn | %s | %s |" % (
            r["requested"], label, fmt_mib(delta),
            "—" if pc is None else "{:.1f} KiB".format(pc / 1024),
            ("%s of nginx" % fmt_ratio(ratio)) if ratio is not None else "—", note))
    o.append("")

    # Targets.
    o.append("## Targets (issue 9)")
    o.append("")

    def target(name, ok, detail):
        verdict = "NOT MEASURED" if ok is None else ("PASS" if ok else "FAIL")
        o.append("- **%s** %s: %s" % (verdict, name, detail))

    r = {k: med[k]["rps"] for k in ROWS}

    def both(*vals):
        return all(v is not None for v in vals)

    if both(r[6], r[2]):
        target("row 6 >= row 2", r[6] >= r[2],
               "sallyport Basic %s/s vs nginx plain proxy %s/s (%s)" % (fmt_rps(r[6]), fmt_rps(r[2]), fmt_ratio(r[6] / r[2])))
    else:
        target("row 6 >= row 2", None, "a row is missing")
    if both(r[6], r[4]):
        target("row 6 >= 1.5 x row 4", r[6] >= 1.5 * r[4],
               "sallyport Basic %s/s vs Caddy basicauth %s/s (%s)" % (fmt_rps(r[6]), fmt_rps(r[4]), fmt_ratio(r[6] / r[4])))
    else:
        target("row 6 >= 1.5 x row 4", None, "a row is missing")
    if both(r[6], r[3]) and r[3] > 0:
        target("row 6 >= 1000 x row 3", r[6] >= 1000 * r[3],
               "sallyport Basic %s/s vs nginx auth_basic %s/s (%s)" % (fmt_rps(r[6]), fmt_rps(r[3]), fmt_ratio(r[6] / r[3])))
    else:
        target("row 6 >= 1000 x row 3", None, "a row is missing or row 3 served nothing")
    if both(r[7], r[5]):
        target("row 7 >= 0.9 x row 5", r[7] >= 0.9 * r[5],
               "Bearer %s/s vs public %s/s (%s)" % (fmt_rps(r[7]), fmt_rps(r[5]), fmt_ratio(r[7] / r[5])))
    else:
        target("row 7 >= 0.9 x row 5", None, "a row is missing")
    p99_8, p99_6 = med[8]["p99"], med[6]["p99"]
    if both(p99_8, p99_6) and floods:
        f429 = sum(f["status"].get("429", 0) for f in floods)
        ok = p99_8 <= 2 * p99_6 and f429 > 0 and med[8]["non2xx"] == 0
        target("row 8: p99 <= 2 x row 6's, flood gets 429s, legitimate requests all succeed", ok,
               "p99 %s under flood vs %s without (%s); %d flood requests got 429; %d legitimate non-2xx"
               % (fmt_ms(p99_8), fmt_ms(p99_6), fmt_ratio(p99_8 / p99_6), f429, med[8]["non2xx"]))
    else:
        target("row 8: p99 <= 2 x row 6's and flood gets 429s", None, "row 6 or row 8 (or the flood) is missing")
    if per_conn.get("sallyport") is not None and per_conn.get("nginx"):
        sp, ng = per_conn["sallyport"], per_conn["nginx"]
        target("idle memory per connection <= 2 x nginx's", sp <= 2 * ng,
               "sallyport %.1f KiB vs nginx %.1f KiB per idle TLS connection (%s)" % (sp / 1024, ng / 1024, fmt_ratio(sp / ng)))
    else:
        target("idle memory per connection <= 2 x nginx's", None, idle_err or "the memory row did not run")
    o.append("")

    # Per-round numbers, to judge drift.
    rounds = sorted({s["round"] for ss in samples.values() for s in ss})
    if rounds:
        o.append("## Every round")
        o.append("")
        o.append("requests/s (p99) per round, in the order each round ran them: %s." % (
            meta.get("orders", "")))
        o.append("")
        o.append("| # | " + " | ".join("round %d" % x for x in rounds) + " |")
        o.append("|---|" + "---:|" * len(rounds))
        for row in ROWS:
            cells = []
            for x in rounds:
                s = next((s for s in samples[row] if s["round"] == x), None)
                cells.append("—" if not s or s["rps"] is None else "%s (%s)" % (fmt_rps(s["rps"]), fmt_ms(s["p99"])))
            o.append("| %d | %s |" % (row, " | ".join(cells)))
        o.append("")

    o.append("## How it was measured")
    o.append("")
    o.append("- Load: `wrk --latency %s` against each row (HTTP/1.1 keep-alive), after three "
             "check requests and a %s warm-up. Row 3 (nginx `auth_basic`) gets no warm-up, which "
             "would leave bcrypt work queued into the measurement, and runs for %s s instead: "
             "with 64 requests queued behind bcrypt its first answers take seconds, and a short "
             "run would undercount it." % (meta.get("wrk_args", ""), meta.get("warmup", ""),
                                           meta.get("row3_duration", "?")))
    o.append("- Upstream: one nginx `return 200 \"ok\"` on a loopback port, shared by every row "
             "and started once. Rows 2-8 terminate TLS (one self-signed ECDSA P-256 "
             "certificate for all) and keep upstream connections alive. Negotiated with an "
             "OpenSSL client: %s" % (meta.get("tls", "") or "not recorded"))
    o.append("- Each server is started fresh for each measurement; peak RSS is VmHWM from "
             "/proc at the end of it (nginx: master + workers summed; row 1: the upstream, "
             "its peak reset before the row).")
    o.append("- CPU per request: the server's user + system time from /proc over the measured "
             "`wrk` run (nginx: master + workers; row 1: the upstream), divided by the requests "
             "it served. It moves far less with the machine's other load than requests/s do.")
    o.append("- Row 8: %s" % meta.get("flood", ""))
    o.append("- Row 9: `bench/idle_conns.py` opens the connections (TLS handshake and one request "
             "each, then idle), and the server's summed VmRSS before and after gives the delta.")
    o.append("")
    print("\n".join(o))


if __name__ == "__main__":
    main()
