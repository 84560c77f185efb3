#!/usr/bin/env python3
"""End-to-end: the live daemon's /metrics, scraped with curl and checked by
Prometheus' own promtool. After a scan, the drops, bans and kernel-drop
counters move by what `status` shows; a thousand idle connections to the
metrics port hold a scrape back by at most its timeout while a client loop
keeps every request; and every metric the Grafana dashboard in dist/
queries exists. Exits non-zero on the first failed check.

  metrics.py PORTCLOAK_BINARY WORKDIR
  metrics.py idle N SECONDS      (run inside a namespace) holds N idle
                                 connections to the metrics port
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import ATTACKER4, SERVER4, SERVER4_C, Daemon, check, log, main, run  # noqa: E402

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
URL = "http://127.0.0.1:9469"
TIMEOUT = 2.0  # metrics::TIMEOUT


def idle(n, seconds):
    """Opens n connections to the metrics port, sends nothing, holds them."""
    held = []
    for _ in range(n):
        try:
            held.append(socket.create_connection(("127.0.0.1", 9469), timeout=2))
        except OSError:
            pass
    print("holding", len(held), flush=True)
    time.sleep(seconds)


def scrape(lab, path="/metrics"):
    r = run(lab.ns(lab.server, "curl", "-sS", "-m", "10", "-w", "\n%{http_code}", URL + path), timeout=20)
    body, code = r.stdout.rsplit("\n", 1)
    return int(code), body


def samples(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(s, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    want = ['%s="%s"' % (k, v) for k, v in labels.items()]
    return sum(v for k, v in s.items()
               if (k == name or k.startswith(name + "{")) and all(w in k for w in want))


def promtool(lab, text):
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def counted(status):
    """What status says of the counters the scan moves."""
    k = status["kernel_counters"]
    return {
        "drops": sum(status["drops"].values()),
        "bans": sum(b["count"] for b in status["bans_started"]),
        "kernel_banned4": k["banned4"],
        "kernel_banned4_bytes": k["banned4_bytes"],
    }


def exported(s):
    return {
        "drops": total(s, "portcloak_drops_total"),
        "bans": total(s, "portcloak_bans_started_total"),
        "kernel_banned4": total(s, "portcloak_kernel_dropped_packets_total", list="banned", family="ipv4"),
        "kernel_banned4_bytes": total(s, "portcloak_kernel_dropped_bytes_total", list="banned", family="ipv4"),
    }


def settled(lab, d):
    """A scrape and a status that agree on time: status, scrape, status
    again, until the two statuses match (nothing moved in between)."""
    for _ in range(10):
        a = counted(d.status())
        code, text = scrape(lab)
        b = counted(d.status())
        if a == b:
            return code, text, a
        time.sleep(0.5)
    raise RuntimeError("the counters never settled")


def body(lab, binary, workdir):
    d = Daemon(lab, binary, workdir)
    d.start()
    check(d.status()["metrics"] == "127.0.0.1:9469", "status names where metrics are served")

    code, text = scrape(lab)
    check(code == 200 and "portcloak_build_info{" in text, "curl gets /metrics: %d" % code)
    rc, out = promtool(lab, text)
    check(rc == 0, "promtool check metrics finds no problem: %s" % out.strip())
    check(scrape(lab, "/")[0] == 404 and scrape(lab, "/metricsx")[0] == 404, "other paths are 404")

    code, text, before = settled(lab, d)
    check(exported(samples(text)) == before, "before the scan, metrics and status agree: %s" % before)

    log("nmap -sS -p1-1000, then the banned scanner keeps sending")
    run(lab.ns(lab.attacker, "nmap", "-n", "-Pn", "-sS", "-p1-1000", "--max-retries", "1",
               "--host-timeout", "60s", SERVER4), timeout=120)
    run(lab.ns(lab.attacker, "hping3", "-c", "30", "-i", "u20000", "-S", "-p", "80", SERVER4),
        timeout=30, check=False)
    code, text, after = settled(lab, d)
    s = samples(text)
    moved = {k: after[k] - before[k] for k in after}
    exported_moved = {k: exported(s)[k] - before[k] for k in after}
    log("  status moved:", moved)
    check(exported_moved == moved, "the metrics moved by what status shows: %s" % exported_moved)
    check(moved["drops"] > 0 and moved["bans"] >= 1, "the scan's drops and ban are counted")
    check(moved["kernel_banned4"] >= 30 and moved["kernel_banned4_bytes"] >= 30 * 40,
          "the kernel counted what the banned scanner still sent: %s" % moved)
    status = d.status()
    check(total(s, "portcloak_active_bans", kind="ban", family="ipv4") == status["active"]["ipv4_bans"] == 1,
          "one active IPv4 ban, in the metrics and in status")
    check(total(s, "portcloak_bans_started_total", reason="signature", kind="ban") >= 1,
          "the ban is counted under its reason")
    check("kernel: " in d.ctl("status").stdout and "what banned sources still send" in d.ctl("status").stdout,
          "status shows what banned sources still send")
    check(ATTACKER4 not in text, "no address in any label")
    rc, out = promtool(lab, text)
    check(rc == 0, "promtool still finds no problem: %s" % out.strip())

    log("a thousand idle connections to the metrics port, a client loop and a scrape")
    holder = lab.spawn(lab.server, "python3", HERE, "idle", "1000", "12",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = holder.stdout.readline().split()
    check(len(line) == 2 and int(line[1]) >= 900, "the idle connections are open: %s" % line)
    loop = lab.spawn(lab.client, "python3", os.path.join(os.path.dirname(HERE), "client.py"),
                     SERVER4_C, "loop", "6", "80", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    code, text = scrape(lab)
    took = time.monotonic() - started
    log("  scrape took %.2f s" % took)
    check(code == 200 and "portcloak_packets_total" in text, "the scrape is answered")
    check(took <= TIMEOUT + 1.0, "the idle connections delayed it by at most the timeout: %.2f s" % took)
    out, _ = loop.communicate(timeout=60)
    log("  client loop ->", out.strip())
    check(loop.returncode == 0 and "failed=0" in out, "every request of the client loop succeeded")
    holder.kill()
    holder.wait(10)

    log("the Grafana dashboard")
    with open(os.path.join(ROOT, "dist", "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = set(re.findall(r"\b(portcloak_[a-z0-9_]+|process_[a-z0-9_]+)\b", " ".join(exprs)))
    live = {k.split("{")[0] for k in samples(scrape(lab)[1])}
    check(len(queried) >= 10, "the dashboard queries %d metrics" % len(queried))
    missing = sorted(queried - live)
    check(not missing, "every metric the dashboard queries exists on the live endpoint: missing %s" % missing)

    check(d.stop() == 0, "SIGTERM stops the daemon cleanly")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "idle":
        idle(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main("pcm", "metrics", body)
