#!/usr/bin/env python3
"""End-to-end: hidden services. SSH (port 22) is hidden behind a knock
sequence and HMAC single-packet authorization; real nmap, `portcloak
knock` and crafted packets try to reach it. Exits non-zero on the first
failed check; tears the lab down whatever happens.

  hidden.py PORTCLOAK_BINARY WORKDIR
"""
import hashlib
import hmac
import os
import socket
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import (CLIENT4, SERVER4, SERVER4_C, Daemon, Failed, check, log, main, run)  # noqa: E402

SPA_PORT = 62201
OPEN_FOR = 4
KNOCK = "tcp:7001,udp:7002,tcp:7003"
RULES = """
[services]
tcp = [80, 443, 8080]
udp = [53]
[[hidden]]
port = 22
proto = "tcp"
open_for = "%ds"
[knock]
sequence = ["tcp:7001", "udp:7002", "tcp:7003"]
within = "10s"
[spa]
key_file = "%s"
"""
NMAP = ["nmap", "-Pn", "-sS", "-T4", "--max-retries", "1", "--host-timeout", "60s", "-n", "-oX", "-"]


def nmap_state(lab, port):
    r = run(lab.ns(lab.attacker, *NMAP, "-p", str(port), SERVER4), timeout=90, check=False)
    if r.returncode != 0:
        raise Failed("nmap failed: %s" % r.stderr)
    states = [p.find("state").get("state") for p in ET.fromstring(r.stdout).iter("port")]
    extra = [e.get("state") for e in ET.fromstring(r.stdout).iter("extraports")]
    return (states or extra or ["?"])[0]


def ssh_reachable(lab, ns, host):
    """A TCP connection to 22 that gets the SSH banner within 1.5 s."""
    code = ("import socket,sys\ntry:\n s=socket.create_connection((sys.argv[1],22),1.5); s.settimeout(1.5)\n"
            " sys.exit(0 if s.recv(64).startswith(b'SSH-') else 1)\nexcept OSError: sys.exit(1)")
    return run(lab.ns(ns, "python3", "-c", code, host), timeout=10, check=False).returncode == 0


def send_udp(lab, ns, host, port, payload):
    code = "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))"
    run(lab.ns(ns, "python3", "-c", code, host, str(port), payload.hex()), timeout=10)


def seal(key, timestamp, ip, port=22, nonce=None):
    """The SPA format of src/gate/spa.rs, written again here from its spec."""
    head = b"PCK1" + struct.pack(">Q", timestamp) + (nonce or os.urandom(16))
    head += struct.pack(">HBB", port, 6, 4) + socket.inet_aton(ip) + bytes(12)
    return head + hmac.new(key, head, hashlib.sha256).digest()


def first_udp_payload(pcap):
    """The payload of the first UDP datagram in an Ethernet pcap (IPv4, no options)."""
    with open(pcap, "rb") as f:
        data = f.read()
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack("<I", data[off + 8:off + 12])[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) > 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            return frame[42:]
    raise Failed("no UDP datagram in the capture")


def body(lab, binary, workdir):
    key_file, other = os.path.join(workdir, "spa.key"), os.path.join(workdir, "other.key")
    for old in (key_file, other):  # keygen never overwrites a key
        if os.path.exists(old):
            os.remove(old)
    run([binary, "keygen", key_file])
    check(os.stat(key_file).st_mode & 0o777 == 0o600, "keygen writes the key with mode 0600")
    with open(key_file) as f:
        key = bytes.fromhex(f.read().strip())
    d = Daemon(lab, binary, os.path.join(workdir, "daemon"), extra_rules=RULES % (OPEN_FOR, key_file))
    d.start()

    def counters():
        return d.status()["gate"]

    def knock(*args):
        r = run(lab.ns(lab.client, binary, "knock", SERVER4_C, *args), timeout=30, check=False)
        log("  portcloak knock", " ".join(args), "->", (r.stdout + r.stderr).strip())
        return r

    log("nmap -sS -p 22 from the attacker")
    state = nmap_state(lab, 22)
    check(state == "filtered", "nmap reads 22 as filtered (%s)" % state)
    d.ctl("unban", "all")
    check(not ssh_reachable(lab, lab.attacker, SERVER4), "a plain connect from the attacker gets nothing")
    check(not ssh_reachable(lab, lab.client, SERVER4_C), "nor from the client, before it knocks")

    log("SPA from the client")
    cap = os.path.join(workdir, "spa.pcap")
    dump = lab.spawn(lab.client, "tcpdump", "-i", lab.p + "-cs", "-U", "--immediate-mode", "-w", cap,
                     "udp port %d" % SPA_PORT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    r = knock("--key-file", key_file, "--port", "22")
    check(r.returncode == 0, "portcloak knock sends the SPA packet")
    check(ssh_reachable(lab, lab.client, SERVER4_C), "the client then reaches SSH")
    check(not ssh_reachable(lab, lab.attacker, SERVER4), "the attacker still does not")
    time.sleep(0.5)
    dump.terminate()
    dump.wait(10)
    packet = first_udp_payload(cap)
    check(len(packet) == 80, "the captured SPA packet is 80 bytes")
    c = counters()
    check(c["spa_authorized"] == 1, "one SPA authorization counted")
    check("authorized %s by spa for tcp/22" % CLIENT4 in d.read_log(), "the authorization is logged")

    send_udp(lab, lab.attacker, SERVER4, SPA_PORT, packet)
    time.sleep(0.3)
    check(not ssh_reachable(lab, lab.attacker, SERVER4), "the packet replayed from the attacker opens nothing")
    check(counters()["spa_wrong_source"] == 1, "and is counted as wrong-source")

    time.sleep(OPEN_FOR + 0.5)
    check(not ssh_reachable(lab, lab.client, SERVER4_C), "after open_for, the client needs a new packet")
    send_udp(lab, lab.client, SERVER4_C, SPA_PORT, packet)
    time.sleep(0.3)
    check(not ssh_reachable(lab, lab.client, SERVER4_C), "the same packet replayed by the client opens nothing")
    check(counters()["spa_replay"] == 1, "and is counted as a replay")

    run([binary, "keygen", other])
    bad = [
        ("a packet sealed with another key", None, "spa_bad_hmac"),
        ("a packet stamped 10 minutes ago", seal(key, int(time.time()) - 600, CLIENT4), "spa_stale"),
        ("a truncated packet", seal(key, int(time.time()), CLIENT4)[:47], "spa_malformed"),
        ("80 random bytes", os.urandom(80), "spa_malformed"),
    ]
    for what, payload, counter in bad:
        before = counters()[counter]
        time.sleep(1.1)  # within the source's SPA rate
        if payload is None:
            knock("--key-file", other, "--port", "22")
        else:
            send_udp(lab, lab.client, SERVER4_C, SPA_PORT, payload)
        time.sleep(0.3)
        check(not ssh_reachable(lab, lab.client, SERVER4_C), "%s opens nothing" % what)
        check(counters()[counter] == before + 1, "%s is counted as %s" % (what, counter))
    check(d.proc.poll() is None, "the daemon is still running")
    good = seal(key, int(time.time()), CLIENT4)
    time.sleep(1.1)
    send_udp(lab, lab.client, SERVER4_C, SPA_PORT, good)
    time.sleep(0.3)
    check(ssh_reachable(lab, lab.client, SERVER4_C),
          "a packet sealed by this test from the format's spec opens it (the format is the documented one)")

    log("knock sequence")
    time.sleep(OPEN_FOR + 0.5)
    check(not ssh_reachable(lab, lab.client, SERVER4_C), "closed again after open_for")
    r = knock("--sequence", KNOCK)
    check(r.returncode == 0, "portcloak knock --sequence knocks")
    check(ssh_reachable(lab, lab.client, SERVER4_C), "the knock sequence opens SSH for the client")
    check(counters()["knock_authorized"] == 1, "one knock authorization counted")
    attacker_knock = lambda *s: run(lab.ns(lab.attacker, binary, "knock", SERVER4, "--sequence", ",".join(s)),
                                    timeout=30, check=False)
    attacker_knock("tcp:7001")
    check(lab.can_connect(lab.attacker, SERVER4, 80), "the attacker's request to port 80 in between is served")
    attacker_knock("udp:7002", "tcp:7003")
    check(not ssh_reachable(lab, lab.attacker, SERVER4), "a knock interleaved with another packet opens nothing")
    attacker_knock("tcp:7003", "udp:7002", "tcp:7001")
    check(not ssh_reachable(lab, lab.attacker, SERVER4), "a knock out of order opens nothing")
    check(counters()["knock_authorized"] == 1, "and neither is counted as an authorization")

    out = d.ctl("status").stdout
    check("hidden ports:" in out and "bad-hmac 1" in out, "portcloak status shows the counters")

    log("fail closed")
    d.kill9()
    check(lab.can_connect(lab.client, SERVER4_C, 80), "with the daemon killed, port 80 still answers (bypass)")
    check(not ssh_reachable(lab, lab.client, SERVER4_C), "but the hidden port stays closed")

    log("under load: a SYN flood makes the workers shed, the attacker tries SSH in a loop")
    shedding = Daemon(lab, binary, os.path.join(workdir, "shedding"), extra_rules=RULES % (OPEN_FOR, key_file),
                      daemon_keys='shed_backlog = 4\nshed_age = "1ms"')
    shedding.start()
    flood = lab.spawn(lab.attacker, "timeout", "12", "hping3", "--flood", "--rand-source", "-S", "-p", "80", "-q",
                      SERVER4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    loop = ("import socket,sys,time\nend=time.monotonic()+8; tries=got=0\n"
            "while time.monotonic()<end:\n tries+=1\n try:\n"
            "  s=socket.create_connection((sys.argv[1],22),0.2); s.settimeout(0.5)\n"
            "  got+=s.recv(64).startswith(b'SSH-'); s.close()\n except OSError: pass\n"
            "print(tries, got)")
    r = run(lab.ns(lab.attacker, "python3", "-c", loop, SERVER4), timeout=30, check=False)
    tries, got = (int(x) for x in r.stdout.split())
    status = shedding.status()
    flood.wait(20)
    shed = sum(w["shed"] for w in status["workers"])
    log("  %d connection attempts, %d banners; %d packets, %d shed" % (tries, got, status["packets"], shed))
    check(shed > 1000, "the workers shed under the flood")
    check(tries > 20, "the attacker kept trying")
    check(got == 0, "and never reached the hidden port")


if __name__ == "__main__":
    main("pch", "hidden e2e", body)
