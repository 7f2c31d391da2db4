#!/usr/bin/env python3
"""Hostile-client load for bench/edges.sh: normal traffic with latencies, slow connections
(silent, HTTP/2 preface only, slow header, slow body) timed until keyrelay closes them, and a
hold of many idle connections while keyrelay's CPU is sampled. Loopback only; prints JSON.

  edges.py normal URL TOKEN SECONDS
  edges.py slow HOST:PORT PID ADMIN_URL TOKEN WATCH_SECONDS SILENT PREFACE SLOW_HEADER SLOW_BODY
  edges.py hold HOST:PORT PID COUNT HOLD_SECONDS
"""

import http.client
import json
import os
import resource
import selectors
import socket
import sys
import threading
import time
import urllib.request

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHAT = b'{"model":"mock","messages":[{"role":"user","content":"Say hello."}]}'
TICK = 0.05


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def normal(url, token, seconds, threads=4, pause=0.02):
    """Keep-alive POSTs from a few threads, a short pause between; latencies and errors."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    host, port = host_port.rsplit(":", 1)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    lat, errors, lock = [], [], threading.Lock()
    end = time.monotonic() + seconds

    def run():
        conn = None
        while time.monotonic() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=10)
                t = time.monotonic()
                conn.request("POST", path, CHAT, headers)
                r = conn.getresponse()
                r.read()
                took = time.monotonic() - t
                with lock:
                    if r.status == 200:
                        lat.append(took)
                    else:
                        errors.append(f"status {r.status}")
            except Exception as e:  # a refused or reset connection is an error to count
                with lock:
                    errors.append(type(e).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(pause)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {
        "requests": len(lat) + len(errors),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p50_ms": round(percentile(lat, 50) * 1000, 2) if lat else None,
        "p99_ms": round(percentile(lat, 99) * 1000, 2) if lat else None,
    }


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gauge(admin_url, name):
    try:
        text = urllib.request.urlopen(admin_url + "/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class Slow:
    """One hostile connection: what it sends first, what it trickles, when it was closed."""

    def __init__(self, kind, addr, first, trickle, every):
        self.kind, self.trickle, self.every = kind, trickle, every
        self.sock = socket.create_connection(addr)
        self.sock.setblocking(False)
        self.opened = time.monotonic()
        self.next_send = self.opened + every
        self.closed = None
        if first:
            self.sock.send(first)

    def tick(self, now):
        if self.closed is None and self.trickle and now >= self.next_send:
            self.next_send = now + self.every
            try:
                self.sock.send(self.trickle)
            except OSError:
                self.close(now)

    def readable(self, now):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(now)

    def close(self, now):
        if self.closed is None:
            self.closed = now - self.opened


def open_slow(addr, token, counts):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: keyrelay\r\n"
    body_head = (
        head + f"authorization: Bearer {token}\r\ncontent-type: application/json\r\n"
        "content-length: 100000\r\n\r\n{".encode()
    )
    plan = [
        ("silent", b"", b"", 1.0),
        ("h2_preface", H2_PREFACE, b"", 1.0),
        ("slow_header", head, b"x-slow: 1\r\n", 0.5),
        ("slow_body", body_head, b" ", 5.0),
    ]
    conns = []
    for (kind, first, trickle, every), n in zip(plan, counts):
        for _ in range(n):
            conns.append(Slow(kind, addr, first, trickle, every))
    return conns


def slow(addr, pid, admin_url, token, watch, counts):
    raise_fd_limit()
    rss_before = rss_kib(pid)
    gauge_before = gauge(admin_url, "keyrelay_open_connections") or 0
    cpu_before, t0 = cpu_seconds(pid), time.monotonic()
    conns = open_slow(addr, token, counts)
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    # RSS per connection where keyrelay held the most of them (sampled every 100 ms; some wait
    # in the kernel's accept queue, and the first close before the last are accepted).
    peak = (0, rss_before)
    end, next_sample = time.monotonic() + watch, 0
    while time.monotonic() < end and any(c.closed is None for c in conns):
        for key, _ in sel.select(TICK):
            key.data.readable(time.monotonic())
        now = time.monotonic()
        if now >= next_sample:
            next_sample = now + 0.1
            held = (gauge(admin_url, "keyrelay_open_connections") or 0) - gauge_before
            peak = max(peak, (held, rss_kib(pid)))
        for c in conns:
            c.tick(now)
            if c.closed is not None and c.sock.fileno() != -1:
                sel.unregister(c.sock)
                c.sock.close()
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - t0) * 100
    held, rss_open = peak
    report = {"rss_before_kib": rss_before, "rss_at_peak_kib": rss_open, "peak_held": int(held),
              "cpu_percent": round(cpu, 1), "kinds": {}}
    report["rss_per_slow_connection_kib"] = round((rss_open - rss_before) / max(1, held), 2)
    for kind in ("silent", "h2_preface", "slow_header", "slow_body"):
        mine = [c for c in conns if c.kind == kind]
        times = [c.closed for c in mine if c.closed is not None]
        report["kinds"][kind] = {
            "total": len(mine),
            "closed": len(times),
            "still_open": len(mine) - len(times),
            "closed_after_min_s": round(min(times), 2) if times else None,
            "closed_after_max_s": round(max(times), 2) if times else None,
        }
    for c in conns:
        c.sock.close()
    return report


def hold(addr, pid, count, seconds):
    """Open `count` idle connections; the ones keyrelay keeps, held `seconds` with CPU sampled."""
    raise_fd_limit()
    socks, refused, kinds, streak = [], 0, set(), 0
    for _ in range(count):
        try:
            socks.append(socket.create_connection(addr, timeout=0.25))
            streak = 0
        except OSError as e:  # keyrelay's reset can land before connect() returns
            refused += 1
            kinds.add(type(e).__name__)
            streak = streak + 1 if isinstance(e, TimeoutError) else 0
            if streak >= 20:  # the accept queue is full: the rest would time out too
                break
    time.sleep(0.5)
    kept = []
    for s in socks:
        s.setblocking(False)
        try:
            gone = s.recv(1) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        (s.close() if gone else kept.append(s))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    for s in kept:
        s.close()
    return {"attempted": count, "connect_failed": refused, "connect_errors": sorted(kinds), "closed_at_once": len(socks) - len(kept),
            "held_open": len(kept), "cpu_percent_while_held": round(cpu, 1), "held_seconds": seconds}


def main(argv):
    mode = argv[1]
    if mode == "normal":
        out = normal(argv[2], argv[3], float(argv[4]))
    elif mode == "slow":
        host, port = argv[2].rsplit(":", 1)
        counts = [int(x) for x in argv[7:11]]
        out = slow((host, int(port)), int(argv[3]), argv[4], argv[5], float(argv[6]), counts)
    elif mode == "hold":
        host, port = argv[2].rsplit(":", 1)
        out = hold((host, int(port)), int(argv[3]), int(argv[4]), float(argv[5]))
    else:
        sys.exit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
