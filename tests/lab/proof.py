#!/usr/bin/env python3
"""End-to-end: proven clients. The kernel proves the (source, port) pairs
that completed a handshake; a proven pair's new connections skip the
queue, and packets anyone can forge never cut off a proven client or a
peer this host talks to. Real nmap, hping3 and forged segments, in the
lab's namespaces; exits non-zero on the first failed check.

  proof.py PORTCLOAK_BINARY WORKDIR
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inline import client_ok, learned, scan  # noqa: E402
from lab import (ATTACKER4, CLIENT4, SERVER4, SERVER4_C, SERVER6, Daemon, Failed, check, log, main,  # noqa: E402
                 run)

HERE = os.path.dirname(os.path.abspath(__file__))
RESOLVER = "198.18.2.53"  # a DNS-like server the server namespace queries
NOWHERE = "198.18.1.77"   # on the attacker's link, but no host answers for it


def forge(lab, *args):
    run(lab.ns(lab.attacker, "python3", os.path.join(HERE, "forge.py"), *args), timeout=30)


def nft_set(lab, name):
    return run(lab.ns(lab.server, "nft", "list", "set", "inet", "portcloak", name)).stdout


def entries(d):
    return {b["source"]: b["kind"] for b in d.bans()}


def loop(lab, seconds):
    """A client request loop on port 80 in the background."""
    return lab.spawn(lab.client, "python3", os.path.join(HERE, "client.py"), SERVER4_C, "loop",
                     str(seconds), "80", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def loop_ok(proc, what):
    out, err = proc.communicate(timeout=120)
    log("  client loop ->", out.strip(), err.strip()[-300:])
    check(proc.returncode == 0 and "ok=" in out and not out.startswith("ok=0 "), what)


def body(lab, binary, workdir):
    run(lab.ns(lab.client, "ip", "addr", "add", RESOLVER + "/24", "dev", lab.p + "-cs"))
    lab.spawn(lab.client, "python3", os.path.join(HERE, "services.py"), "--tcp", "--udp", "53",
              "--bind", RESOLVER, stdout=subprocess.DEVNULL)
    d = Daemon(lab, binary, workdir)
    d.start()

    log("a returning client skips the queue")
    check(client_ok(lab, SERVER4_C, "burst", "1", "80")[0], "the client's first request succeeds")
    before = d.status()
    check(client_ok(lab, SERVER4_C, "burst", "30", "80")[0], "30 more requests succeed")
    after = d.status()
    fast = after["kernel_counters"]["fast_path"] - before["kernel_counters"]["fast_path"]
    queued = after["packets"] - before["packets"]
    check(fast >= 30 and queued == 0, "the 30 connections took the fast path (%d fast, %d queued)"
          % (fast, queued))
    check(CLIENT4 + " . tcp . 80" in nft_set(lab, "proven4"), "the pair is in the kernel set proven4")

    log("a DNS-like client: 200 queries from new source ports after one answered")
    check(client_ok(lab, SERVER4_C, "dns", "1", "53")[0], "the first query is answered")
    before = d.status()
    ok, out = client_ok(lab, SERVER4_C, "dns", "200", "53")
    after = d.status()
    fast = after["kernel_counters"]["fast_path"] - before["kernel_counters"]["fast_path"]
    queued = after["packets"] - before["packets"]
    check(ok and "ok=200 " in out, "every one of the 200 queries is answered")
    # A source port the client's kernel reuses within conntrack's UDP
    # timeout joins the earlier flow and passes as established instead.
    check(queued == 0 and fast >= 190, "the queue saw none of them (%d queued, %d fast path)"
          % (queued, fast))

    log("conntrack flushed in the middle of a client's open connection")
    midway = lab.spawn(lab.client, "python3", os.path.join(HERE, "client.py"), SERVER4_C, "midway", "80",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    check(midway.stdout.readline().strip() == "sent-half", "the client sent half its request")
    run(lab.ns(lab.server, "conntrack", "-F"), check=False)
    out, err = midway.communicate("go\n", timeout=30)
    check(midway.returncode == 0 and "ok=1 " in out, "the rest of the request, picked up mid-stream, "
          "is answered: %s %s" % (out.strip(), err.strip()[-200:]))
    check(CLIENT4 not in entries(d), "and the client is not banned")

    log("nmap -sS -D <client>,ME -p1-1000, while the client works")
    proc = loop(lab, 25)
    time.sleep(1)
    st = scan(lab, "-sS", "-D", CLIENT4 + ",ME", "-p1-1000", SERVER4)
    loop_ok(proc, "every client request before, during and after the decoy scan succeeded")
    check(learned(st) == 0, "nmap reports no port open or closed: %s" % st)
    e = entries(d)
    check(e.get(ATTACKER4) == "ban", "the scanner is banned: %s" % e)
    check(CLIENT4 not in nft_set(lab, "ban4"), "the client is never in the kernel ban set")
    log("  client's entry:", e.get(CLIENT4))
    check(client_ok(lab, SERVER4_C, "burst", "20", "80")[0], "and its requests still succeed")

    log("a forged hping3 -S -a <client> sweep of 50 closed ports")
    d.ctl("unban", "all")
    proc = loop(lab, 8)
    run(lab.ns(lab.attacker, "hping3", "-S", "-a", CLIENT4, "-p", "++1000", "-c", "50", "-i", "u20000",
               SERVER4), timeout=30, check=False)
    loop_ok(proc, "every client request during the forged sweep succeeded")
    e = entries(d)
    check(e.get(CLIENT4) != "ban" and CLIENT4 not in nft_set(lab, "ban4"),
          "the client is not banned (%s), and not in the kernel ban set" % e.get(CLIENT4))
    check(e.get(CLIENT4) == "quarantine", "the forged sweep quarantined it: %s" % e)
    check(client_ok(lab, SERVER4_C, "burst", "20", "80")[0], "its proven pair keeps working")
    check(not lab.can_connect(lab.client, SERVER4_C, 443), "a port it never proved is closed to it")
    d.ctl("unban", "all")
    time.sleep(0.3)
    check(lab.can_connect(lab.client, SERVER4_C, 443), "portcloak unban lifts the quarantine")

    log("a blind spoofer cannot prove a pair")
    forge(lab, NOWHERE, SERVER4, "5555", "80", "S", "--seq", "1000")
    time.sleep(0.3)
    ct = run(lab.ns(lab.server, "conntrack", "-L", "-s", NOWHERE), check=False).stdout
    check("SYN_RECV" in ct, "the forged SYN reached the server, which answered it: %s" % ct.strip())
    forge(lab, NOWHERE, SERVER4, "5555", "80", "A", "--seq", "1001", "--ack", "1")
    # Each guess lands in conntrack's window (about 64 KiB of 4 GiB) with
    # odds of 1 in 65000: 20 guesses make a false failure 1 in 3000.
    forge(lab, NOWHERE, SERVER4, "5555", "80", "A", "--seq", "1001", "--random-ack", "--count", "20")
    time.sleep(0.3)
    ct = run(lab.ns(lab.server, "conntrack", "-L", "-s", NOWHERE), check=False).stdout
    check("ASSURED" not in ct and "ESTABLISHED" not in ct,
          "conntrack refused 21 guessed acknowledgements: %s" % ct.strip())
    check(NOWHERE not in nft_set(lab, "proven4") and NOWHERE not in nft_set(lab, "peers4"),
          "the spoofed address is not proven")

    log("nmap -sO and -sY")
    for kind, ports in (("-sO", "1-255"), ("-sY", "1-1000")):
        d.ctl("unban", "all")
        st = scan(lab, kind, "-p", ports, SERVER4)
        check(learned(st) == 0, "%s reports nothing open or closed: %s" % (kind, st))
        check(entries(d).get(ATTACKER4) == "ban", "the %s scanner is banned" % kind)

    log("a forged NULL from the server's resolver")
    d.ctl("unban", "all")
    ok, _ = client_ok_in(lab, lab.server, RESOLVER, "dns", "5", "53")
    check(ok, "the server's lookups are answered")
    for port in ("1", "2", "3", "4"):
        forge(lab, RESOLVER, SERVER4, "53", port, "none")
    time.sleep(0.3)
    e = entries(d)
    check(RESOLVER in e, "the forged packets reached the engine (%s)" % e)
    check(e[RESOLVER] == "quarantine", "the resolver, a peer this host chose, is only quarantined")
    ok, _ = client_ok_in(lab, lab.server, RESOLVER, "dns", "20", "53")
    check(ok, "the server's lookups are still answered")
    check(RESOLVER not in nft_set(lab, "ban4"), "the resolver is not in the kernel ban set")
    d.ctl("ban", RESOLVER, "--for", "60s")
    ok, _ = client_ok_in(lab, lab.server, RESOLVER, "dns", "20", "53")
    check(ok, "even banned by hand, it still answers the lookups this host makes")

    log("forged packets from the server's own address and from a link-local one")
    d.ctl("unban", "all")
    before = d.status()
    forge(lab, SERVER4, SERVER4, "1234", "80", "none")
    forge(lab, SERVER4_C, SERVER4, "1234", "81", "S", "--window", "1024")
    forge(lab, "fe80::dead", SERVER6, "1234", "80", "none")
    time.sleep(0.3)
    after = d.status()
    martian = after["drops"].get("martian", 0) - before["drops"].get("martian", 0)
    probes = after["drops"].get("probe", 0) - before["drops"].get("probe", 0)
    unbannable = after["guards"]["unbannable"] - before["guards"]["unbannable"]
    check(martian == 2, "both packets from the server's own addresses are dropped (martian %d)" % martian)
    check(probes >= 1 and unbannable >= 1, "the link-local NULL is dropped (%d) and bans nothing (%d)"
          % (probes, unbannable))
    check(d.bans() == [], "nothing is banned")
    check("fe80" not in nft_set(lab, "ban6"), "nothing link-local is in the kernel set ban6")

    log("the attacker completes one request to port 80, then scans")
    d.ctl("unban", "all")
    check(client_ok_in(lab, lab.attacker, SERVER4, "burst", "1", "80")[0], "the attacker's request succeeds")
    st = scan(lab, "-sS", "-p1-1000", SERVER4)
    opened = st.get("open", 0)
    check(st.get("closed", 0) == 0 and opened <= 1, "nmap reports no open port but 80, none closed: %s" % st)
    check(entries(d).get(ATTACKER4) in ("ban", "quarantine"), "the attacker is quarantined or banned: %s"
          % entries(d))
    check(not lab.can_connect(lab.attacker, SERVER4, 443), "and cannot reach another port")

    check(d.stop() == 0, "SIGTERM stops the daemon cleanly")
    ruleset = run(lab.ns(lab.server, "nft", "list", "ruleset")).stdout
    check(ruleset.strip() == "", "the ruleset is empty again:\n" + ruleset)


def client_ok_in(lab, ns, *args):
    r = run(lab.ns(ns, "python3", os.path.join(HERE, "client.py"), *args), timeout=120, check=False)
    log("  %s client" % ns, " ".join(args), "->", r.stdout.strip())
    return r.returncode == 0, r.stdout


if __name__ == "__main__":
    main("pcp", "proof end-to-end", body)
