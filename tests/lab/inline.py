#!/usr/bin/env python3
"""End-to-end: portcloak run inline in the lab's server namespace, against
real nmap, hping3 and ordinary clients. Exits non-zero on the first
failed check; tears the lab down whatever happens.

  inline.py PORTCLOAK_BINARY WORKDIR
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import (ATTACKER4, SERVER4, SERVER4_C, SERVER6, Daemon, Failed, check, log, main, port_states,  # noqa: E402
                 run)

# Fast timeouts suit a lab with microsecond round trips; they change how
# long a scan takes, not what it can learn.
NMAP = ["nmap", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "90s",
        "--max-rtt-timeout", "150ms", "-n", "-oX", "-"]
MEMORY_LIMIT_MIB = 256
DAEMON = "memory_limit = %d" % MEMORY_LIMIT_MIB
LEARNED = {"open", "closed", "unfiltered"}


def scan(lab, *args):
    """Runs nmap from the attacker; returns {state: count} over every port."""
    r = run(lab.ns(lab.attacker, *NMAP, *args), timeout=120, check=False)
    if r.returncode != 0:
        raise Failed("nmap %s failed: %s" % (" ".join(args), r.stderr))
    return port_states(r.stdout)


def learned(states):
    return sum(n for s, n in states.items() if s in LEARNED)


def client_ok(lab, *args, timeout=120):
    r = lab.client_run(*args, timeout=timeout)
    log("  client", " ".join(args), "->", r.stdout.strip())
    return r.returncode == 0, r.stdout


def ratio(out):
    fields = dict(f.split("=") for f in out.split())
    ok, bad = int(fields["ok"]), int(fields["failed"])
    return ok / max(1, ok + bad), ok + bad


def banned(d, source):
    return any(b["source"] == source for b in d.bans())


def body(lab, binary, workdir):
    d = Daemon(lab, binary, workdir, daemon_keys=DAEMON)
    with open(d.state, "w") as f:
        f.write('{"version": 1, "bans": [')  # a state file cut short
    d.start()
    check("damaged" in d.read_log(), "a damaged state file is a warning and an empty start")
    check(d.bans() == [], "no bans after the damaged state file")

    log("nmap -sS -p1-1000")
    st = scan(lab, "-sS", "-p1-1000", SERVER4)
    check(learned(st) <= 1, "-sS reports at most 1 port open or closed: %s" % st)
    check(banned(d, ATTACKER4), "the SYN scanner is banned")
    check(not lab.can_connect(lab.attacker, SERVER4, 80), "the attacker cannot reach port 80")
    check(client_ok(lab, SERVER4_C, "burst", "5", "80")[0], "the client still can")
    counters = run(lab.ns(lab.server, "nft", "list", "set", "inet", "portcloak", "ban4")).stdout
    check(ATTACKER4 in counters, "the ban is in the kernel set ban4")
    check('portcloak: ban %s for 1h reason "signature nmap-syn"' % ATTACKER4 in d.read_log(),
          "the ban is logged in one fail2ban-friendly line")
    time.sleep(1.5)  # the event file is flushed after a second without events
    with open(d.events) as f:
        events = [json.loads(line) for line in f]
    check(any(e["event"] == "ban" and e["source"] == ATTACKER4 for e in events)
          and any(e["event"] == "drop" for e in events), "the event file has the drops and the ban")

    d.ctl("unban", "all")
    log("nmap -sT -p1-1000")
    st = scan(lab, "-sT", "-p1-1000", SERVER4)
    check(learned(st) <= 6, "-sT reports at most 6 ports open or closed: %s" % st)
    # A connect scan that reached an open port proved its pair, and would be
    # quarantined, not banned, by the scans below (tests/lab/proof.py covers
    # that): start them from a scanner that never proved itself.
    for name in ("proven4", "peers4"):
        run(lab.ns(lab.server, "nft", "flush", "set", "inet", "portcloak", name))

    for kind in ("-sF", "-sN", "-sX", "-sM", "-sA", "-sW"):
        d.ctl("unban", "all")
        log("nmap", kind, "-p1-1000")
        st = scan(lab, kind, "-p1-1000", SERVER4)
        check(learned(st) == 0, "%s reports no port open, closed or unfiltered: %s" % (kind, st))
        check(banned(d, ATTACKER4), "the %s scanner is banned" % kind)

    d.ctl("unban", "all")
    log("nmap -sU -p1-200")
    st = scan(lab, "-sU", "-p1-200", SERVER4)
    check(learned(st) <= 2, "-sU reports at most 2 ports: %s" % st)

    d.ctl("unban", "all")
    log("nmap -6 -sS -p1-1000")
    st = scan(lab, "-6", "-sS", "-p1-1000", SERVER6)
    check(learned(st) <= 1, "-6 -sS reports at most 1 port open or closed: %s" % st)
    check(banned(d, "fd5c:a11:1::/64"), "the IPv6 scanner's /64 is banned")
    check(not lab.can_connect(lab.attacker, SERVER6, 80), "the IPv6 attacker cannot reach port 80")

    log("ordinary clients")
    check(client_ok(lab, SERVER4_C, "burst", "120", "80")[0], "120 sequential requests all succeed")
    check(client_ok(lab, SERVER4_C, "parallel", "80", "80", "40")[0], "80 requests, 40 at once, all succeed")
    check(client_ok(lab, SERVER4_C, "mistype", "80")[0], "two mistyped ports, then 20 requests all succeed")

    log("kill -9 during a request loop")
    scan(lab, "-sS", "-p1-100", SERVER4)
    check(banned(d, ATTACKER4), "the attacker is banned again")
    time.sleep(0.3)  # the state file follows a ban within 50 ms
    loop = lab.spawn(lab.client, "python3", os.path.join(os.path.dirname(__file__), "client.py"),
                     SERVER4_C, "loop", "6", "80", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    d.kill9()
    check(not lab.can_connect(lab.attacker, SERVER4, 80), "with portcloak dead, the kernel set still drops the attacker")
    out, _ = loop.communicate(timeout=60)
    log("  client loop ->", out.strip())
    check(loop.returncode == 0, "every request during the kill -9 succeeded (bypass)")
    d.start()
    check(banned(d, ATTACKER4), "after the restart the attacker's ban is back")
    check(not lab.can_connect(lab.attacker, SERVER4, 80), "and the attacker still cannot reach port 80")

    log("SYN flood from random sources for 10 s")
    loop = lab.spawn(lab.client, "python3", os.path.join(os.path.dirname(__file__), "client.py"),
                     SERVER4_C, "loop", "12", "80", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    run(lab.ns(lab.attacker, "timeout", "10", "hping3", "--flood", "--rand-source", "-S", "-p", "80", "-q", SERVER4),
        timeout=30, check=False)
    out, _ = loop.communicate(timeout=60)
    share, total = ratio(out)
    log("  client during the flood: %.2f%% of %d requests succeeded" % (share * 100, total))
    check(total >= 20 and share >= 0.99, "the client's success is at least 99%")
    status = d.status()
    peak = status["memory"]["peak"] >> 20
    log("  daemon: %d packets, %d shed, peak memory %d MiB, tables %s"
        % (status["packets"], sum(w["shed"] for w in status["workers"]), peak, status["tables"]))
    check(status["packets"] > 10000, "the flood reached the daemon")
    check(peak < MEMORY_LIMIT_MIB, "peak memory %d MiB stays under the configured %d MiB" % (peak, MEMORY_LIMIT_MIB))
    check(banned(d, ATTACKER4), "the flood's sources did not evict the attacker's ban")

    d.ctl("unban", ATTACKER4)
    time.sleep(0.3)
    check(lab.can_connect(lab.attacker, SERVER4, 80), "portcloak unban lets the attacker back in")

    log("clean stop")
    check(d.stop() == 0, "SIGTERM stops the daemon cleanly")
    ruleset = run(lab.ns(lab.server, "nft", "list", "ruleset")).stdout
    check("portcloak" not in ruleset.lower() and ruleset.strip() == "",
          "the ruleset holds nothing of portcloak:\n" + ruleset)
    with open(d.state) as f:
        check('"source"' in f.read(), "the bans wait in the state file")

    log("outbound queues on (SYN-ACKs, RSTs and ICMP replies queued)")
    d = Daemon(lab, binary, os.path.join(workdir, "outbound"), daemon_keys=DAEMON + "\noutbound = true")
    d.start()
    check(client_ok(lab, SERVER4_C, "burst", "60", "80")[0], "60 sequential requests all succeed")
    check(client_ok(lab, SERVER4_C, "parallel", "80", "80", "40")[0], "80 requests, 40 at once, all succeed")
    st = scan(lab, "-sS", "-p1-1000", SERVER4)
    check(learned(st) <= 1, "-sS reports at most 1 port open or closed: %s" % st)
    status = d.status()
    outbound = status["workers"][len(status["workers"]) // 2:]
    check(sum(w["packets"] for w in outbound) >= 140, "the outbound workers saw the SYN-ACKs: %s"
          % [w["packets"] for w in outbound])
    check(status["tables"]["flows"] > 0, "handshakes are tracked")
    # One forgeable packet from a source that just completed handshakes
    # must not ban it: the kernel's proof marks its packets.
    run(lab.ns(lab.client, "hping3", "-c", "1", "-p", "9", "-F", SERVER4_C), timeout=20, check=False)
    time.sleep(0.3)
    guards = d.status()["guards"]
    check(guards["handshake_grace"] >= 1 and not banned(d, "198.18.2.2"),
          "a client that completed handshakes is not banned on one stray FIN: %s" % guards)
    check(d.stop() == 0, "SIGTERM stops the daemon cleanly")
    ruleset = run(lab.ns(lab.server, "nft", "list", "ruleset")).stdout
    check(ruleset.strip() == "", "the ruleset is empty again:\n" + ruleset)


if __name__ == "__main__":
    main("pce", "end-to-end", body)
