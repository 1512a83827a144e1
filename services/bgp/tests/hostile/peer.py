"""A hostile host on the core segment, run by tests/hostile.rs inside its own network namespace.

    python3 peer.py strangers TARGET COUNT   COUNT idle connections to TARGET:179 (from an address
                                             that is no configured peer); prints how many were
                                             closed by the other side within 5 s
    python3 peer.py attacks TARGET           one connection per attack from a configured peer's
                                             address; prints one JSON object per attack: its name
                                             and the NOTIFICATION (code, subcode) it got, or null
                                             if the session was still up after it
    python3 peer.py stall TARGET SECONDS     a session from a configured peer's address that stops
                                             reading once established (a 4 KiB receive buffer) but
                                             goes on sending KEEPALIVEs; prints when it stopped
                                             reading and when, if within SECONDS, it was cut

Bounded: every socket has a timeout, every loop a count. Only TARGET, an address of a namespace
the test created, is dialled.
"""

import json
import os
import resource
import socket
import struct
import sys
import time

MARKER = b"\xff" * 16
MY_AS = 64524


def message(kind, body):
    return MARKER + struct.pack("!HB", 19 + len(body), kind) + body


def open_msg(version=4, asn=MY_AS, hold=90, router_id="10.4.36.238"):
    # Capabilities: multiprotocol IPv4 unicast, 4-octet AS.
    caps = bytes([1, 4, 0, 1, 0, 1]) + bytes([65, 4]) + struct.pack("!I", asn)
    params = bytes([2, len(caps)]) + caps
    body = struct.pack("!BHH", version, asn if asn <= 65535 else 23456, hold)
    body += socket.inet_aton(router_id) + bytes([len(params)]) + params
    return message(1, body)


KEEPALIVE = message(4, b"")
ORIGIN = bytes([0x40, 1, 1, 0])
AS_PATH = bytes([0x40, 2, 6, 2, 1]) + struct.pack("!I", MY_AS)
NEXT_HOP = bytes([0x40, 3, 4, 10, 4, 36, 238])


def update(attrs, nlri=bytes([24, 10, 99, 1]), withdrawn=b"", attrs_len=None):
    length = len(attrs) if attrs_len is None else attrs_len
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", length) + attrs + nlri
    return message(2, body)


def connect(target):
    s = socket.create_connection((target, 179), timeout=5)
    s.settimeout(5)
    return s


def read_messages(s, until):
    """Messages until the connection closes or `until` (monotonic) passes: list of (type, body)."""
    buf, out = b"", []
    while time.monotonic() < until:
        s.settimeout(max(0.05, until - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            out.append(("closed", b""))
            break
        if not chunk:
            out.append(("closed", b""))
            break
        buf += chunk
        while len(buf) >= 19:
            length = struct.unpack("!H", buf[16:18])[0]
            if length < 19 or len(buf) < length:
                break
            out.append((buf[18], buf[19:length]))
            buf = buf[length:]
    return out


def notification_of(messages):
    for kind, body in messages:
        if kind == 3 and len(body) >= 2:
            return [body[0], body[1]]
    return None


def established(target):
    """A session from this address: OPEN, KEEPALIVE both ways."""
    s = connect(target)
    s.sendall(open_msg() + KEEPALIVE)
    got = read_messages(s, time.monotonic() + 3)
    kinds = [k for k, _ in got]
    if 1 not in kinds or 4 not in kinds:
        raise SystemExit(f"no session from this address: {got}")
    return s


def attack(target, name, payload, after_open=False, wait=3.0):
    """Sends `payload` on a fresh connection; the NOTIFICATION it draws, or null if none."""
    s = established(target) if after_open else connect(target)
    try:
        s.sendall(payload)
    except OSError:
        pass
    got = read_messages(s, time.monotonic() + wait)
    s.close()
    print(json.dumps({"attack": name, "notification": notification_of(got)}), flush=True)


def repairs(target):
    """Malformed UPDATEs RFC 7606 handles without a reset, all on one session, which must stay up."""
    s = established(target)
    cases = {
        "origin 7": update(bytes([0x40, 1, 1, 7]) + AS_PATH + NEXT_HOP),
        "communities of 5 octets": update(ORIGIN + AS_PATH + NEXT_HOP + bytes([0xC0, 8, 5, 1, 2, 3, 4, 5])),
        "aggregator of 5 octets": update(ORIGIN + AS_PATH + NEXT_HOP + bytes([0xC0, 7, 5, 0, 0, 0, 1, 10])),
        "med of 3 octets": update(ORIGIN + AS_PATH + NEXT_HOP + bytes([0x80, 4, 3, 0, 0, 1])),
        "local_pref flagged optional": update(ORIGIN + AS_PATH + NEXT_HOP + bytes([0xC0, 5, 4, 0, 0, 0, 100])),
        "missing next hop": update(ORIGIN + AS_PATH),
        "next hop 0.0.0.0": update(ORIGIN + AS_PATH + bytes([0x40, 3, 4, 0, 0, 0, 0])),
        "host bits set": update(ORIGIN + AS_PATH + NEXT_HOP, nlri=bytes([23, 10, 99, 3])),
        "unknown optional attribute": update(ORIGIN + AS_PATH + NEXT_HOP + bytes([0xC0, 250, 2, 1, 2])),
        "as_path segment type 9": update(ORIGIN + bytes([0x40, 2, 6, 9, 1]) + struct.pack("!I", MY_AS) + NEXT_HOP),
    }
    for name, payload in cases.items():
        s.sendall(payload + KEEPALIVE)
        got = read_messages(s, time.monotonic() + 0.3)
        print(json.dumps({"attack": name, "notification": notification_of(got)}), flush=True)
        if any(k == "closed" for k, _ in got):
            return
    s.close()
    # Until routeplane has seen the close: a connection meanwhile meets an Established session
    # and is refused as a collision (Cease/7), which is right but not what comes next tests.
    time.sleep(1)


def byte_a_second(target):
    """An OPEN a byte a second: cut by the OPEN wait long before it is whole."""
    s = connect(target)
    started, payload = time.monotonic(), open_msg()
    got = []
    for byte in payload[:20]:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            got.append(("closed", b""))
            break
        got += read_messages(s, time.monotonic() + 1.0)
        if any(k == "closed" for k, _ in got):
            break
    print(json.dumps({"attack": "an OPEN a byte a second", "notification": notification_of(got),
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)


def flood(target, prefixes):
    """More prefixes than max-prefixes allows (default 10,000), 800 per UPDATE."""
    s = established(target)
    sent = 0
    try:
        while sent < prefixes:
            n = min(800, prefixes - sent)
            nlri = b"".join(bytes([32, 11, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
                            for i in range(sent, sent + n))
            s.sendall(update(ORIGIN + AS_PATH + NEXT_HOP, nlri=nlri))
            sent += n
    except OSError:
        pass
    got = read_messages(s, time.monotonic() + 5)
    print(json.dumps({"attack": "a flood of prefixes", "notification": notification_of(got)}), flush=True)


def attacks(target):
    garbage = bytes((i * 37 + 11) % 256 for i in range(64))
    attack(target, "garbage", garbage)
    attack(target, "bad marker", b"\x00" * 16 + struct.pack("!HB", 19, 4))
    attack(target, "length over 4096", MARKER + struct.pack("!HB", 5000, 2) + b"\x00" * 40)
    attack(target, "unknown message type", message(9, b""))
    attack(target, "OPEN of version 3", open_msg(version=3))
    attack(target, "OPEN from the wrong AS", open_msg(asn=65000))
    attack(target, "OPEN with hold time 1", open_msg(hold=1))
    attack(target, "attribute list longer than the message", update(ORIGIN, attrs_len=200), after_open=True)
    attack(target, "unrecognized well-known attribute", update(ORIGIN + AS_PATH + NEXT_HOP + bytes([0x40, 99, 1, 0])),
           after_open=True)
    attack(target, "unknown message type when established", message(9, b""), after_open=True)
    repairs(target)
    byte_a_second(target)
    flood(target, 12000)


def stall(target, seconds):
    s = socket.socket()
    # Set before connecting: the window it advertises stays small, so the speaker's writes block
    # after a few KiB instead of after megabytes of buffers.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect((target, 179))
    s.sendall(open_msg() + KEEPALIVE)
    got = read_messages(s, time.monotonic() + 2)
    kinds = [k for k, _ in got]
    if 1 not in kinds or 4 not in kinds:
        raise SystemExit(f"no session from this address: {got}")
    stopped = time.monotonic()
    print(json.dumps({"stopped_reading": True}), flush=True)
    while time.monotonic() - stopped < seconds:
        time.sleep(1)
        try:
            s.sendall(KEEPALIVE)
        except OSError as e:
            cut = round(time.monotonic() - stopped, 1)
            print(json.dumps({"cut_after": cut, "error": str(e)}), flush=True)
            return
    print(json.dumps({"cut_after": None}), flush=True)


def strangers(target, count):
    # Thousands of sockets at once: past the default limit of 1,024 descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((target, 179))
            s.sendall(b"\xff" * 19)
        except OSError:
            pass
        socks.append(s)
    closed = 0
    deadline = time.monotonic() + 5
    for s in socks:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if s.recv(1) == b"":
                closed += 1
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            closed += 1
        except OSError:
            pass
        s.close()
    print(json.dumps({"connections": count, "closed": closed}), flush=True)


if __name__ == "__main__":
    mode, target = sys.argv[1], sys.argv[2]
    if mode == "strangers":
        strangers(target, int(sys.argv[3]))
    elif mode == "attacks":
        attacks(target)
    elif mode == "stall":
        stall(target, float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.flush()
    os._exit(0)
