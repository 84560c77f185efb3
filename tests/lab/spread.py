#!/usr/bin/env python3
"""End-to-end: an IPv6 scan spread over the /64s of one /48. The attacker
holds fd5c:a11:5::/48 and connects from a new /64 every 5 ports, so no /64
reaches a threshold; portcloak bans the /48 (`tracking.ipv6_escalate`) in
the kernel's wide6 set, which drops every /64 of it but those that proved
themselves, across a clean restart and a kill -9. Exits non-zero on the
first failed check.

  spread.py PORTCLOAK_BINARY WORKDIR
  spread.py probe HOST TIMEOUT SRC:PORT...   (run inside a namespace)
"""
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import SERVER6, Daemon, check, log, main, run  # noqa: E402

HERE = os.path.abspath(__file__)
NETWORK = "fd5c:a11:5"
PROVEN, FRESH = 0xffff, 0xfffe


def addr(subnet):
    return "%s:%x::2" % (NETWORK, subnet)


def probe(host, timeout, pairs):
    """Connects from each SRC to PORT of host, all at once; prints
    `SRC PORT open|none` per pair."""
    results = {}

    def one(src, port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.bind((src, 0))
            s.connect((host, port))
            results[(src, port)] = "open"
        except OSError:
            results[(src, port)] = "none"
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(src, int(port))) for src, port in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (src, port), state in sorted(results.items()):
        print(src, port, state)


def connects(lab, src, port):
    r = run(lab.ns(lab.attacker, "python3", HERE, "probe", SERVER6, "1.5", "%s,%d" % (src, port)),
            timeout=20)
    return r.stdout.split()[-1] == "open"


def body(lab, binary, workdir):
    for subnet in list(range(12)) + [PROVEN, FRESH]:
        run(lab.ns(lab.attacker, "ip", "-6", "addr", "add", addr(subnet) + "/64", "dev", lab.p + "-as",
                   "nodad"))
    run(lab.ns(lab.server, "ip", "-6", "route", "add", NETWORK + "::/48", "dev", lab.p + "-sa"))
    d = Daemon(lab, binary, workdir)
    d.start()

    log("a client of the /48 connects before the scan")
    check(connects(lab, addr(PROVEN), 80), "its connection to port 80 succeeds")

    log("a connect scan of ports 1-60 from a new /64 every 5 ports")
    opened = []
    for subnet in range(12):
        pairs = ["%s,%d" % (addr(subnet), port) for port in range(subnet * 5 + 1, subnet * 5 + 6)]
        out = run(lab.ns(lab.attacker, "python3", HERE, "probe", SERVER6, "0.3", *pairs), timeout=20).stdout
        opened += [line for line in out.splitlines() if line.endswith(" open")]
    log("  open:", opened)
    bans = {b["source"]: b for b in d.bans()}
    network = bans.get(NETWORK + "::/48")
    check(network is not None and network["reason"].startswith("spread-scan"),
          "the /48 is banned for a spread scan: %s" % sorted(bans))
    check(not any(b.endswith("/64") for b in bans), "and no /64 of it reached a threshold alone")
    check(not opened, "the scan found no open port (22 was past the ban): %s" % opened)
    wide = run(lab.ns(lab.server, "nft", "list", "set", "inet", "portcloak", "wide6")).stdout
    check(NETWORK + "::" in wide, "the kernel set wide6 holds it")

    log("the kernel drops the /48 but its proven /64")
    before = d.status()
    check(not connects(lab, addr(FRESH), 80), "a /64 of it that never connected cannot reach port 80")
    after = d.status()
    dropped = after["kernel_counters"]["banned6"] - before["kernel_counters"]["banned6"]
    check(dropped >= 1 and after["packets"] == before["packets"],
          "the kernel dropped its SYNs (%d) and the queue saw none" % dropped)
    check(connects(lab, addr(PROVEN), 80), "the client that proved itself still connects")

    log("restart: the network ban comes back from the state file")
    check(d.stop() == 0, "SIGTERM stops the daemon cleanly")
    d.start()
    check(any(b["source"] == NETWORK + "::/48" for b in d.bans()), "the /48 ban is restored")
    wide = run(lab.ns(lab.server, "nft", "list", "set", "inet", "portcloak", "wide6")).stdout
    check(NETWORK + "::" in wide, "and back in the kernel set")
    check(not connects(lab, addr(FRESH), 80), "the fresh /64 still cannot connect")
    check(connects(lab, addr(PROVEN), 80), "the proven client still connects: the stop saved its proof")
    peers = run(lab.ns(lab.server, "nft", "list", "set", "inet", "portcloak", "peers6")).stdout
    check("%s:%x::" % (NETWORK, PROVEN) in peers, "its proof is back in peers6")

    log("kill -9 and restart: the proofs of the table left behind carry over")
    d.kill9()
    d.start()
    check(connects(lab, addr(PROVEN), 80), "the proven client still connects")
    check(not connects(lab, addr(FRESH), 80), "the fresh /64 still cannot")

    log("portcloak unban of one address lifts its network's ban")
    d.ctl("unban", addr(FRESH))
    time.sleep(0.3)
    check(connects(lab, addr(FRESH), 80), "the fresh /64 connects again")
    check(d.stop() == 0, "SIGTERM stops the daemon cleanly")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        probe(sys.argv[2], float(sys.argv[3]), [p.rsplit(",", 1) for p in sys.argv[4:]])
    else:
        main("pcw", "spread", body)
