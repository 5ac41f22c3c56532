#!/usr/bin/env python3
"""The host end of VhostKernelLinuxTests' vsock test.

    vsock_peer.py GUEST_CID ECHO_PORT ACCEPT_PORT SIZE SECONDS

1. listens on (VMADDR_CID_ANY, ACCEPT_PORT); the guest connects and sends a message, which is
   answered with "host-ack" and printed as "ACCEPTED <cid> <message>";
2. connects to (GUEST_CID, ECHO_PORT), retrying while the guest's echo server is not up, sends
   SIZE random bytes, reads them back and prints "ECHO-OK <size>" if they are identical.
Each step that fails prints "FAIL <why>" and exits 1.
"""
import os, socket, sys, time

cid, echo_port, accept_port, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
deadline = time.time() + float(sys.argv[5])


def say(line):
    print(line, flush=True)


def fail(why):
    say("FAIL " + why)
    sys.exit(1)


def left():
    return max(1.0, deadline - time.time())


listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
listener.bind((socket.VMADDR_CID_ANY, accept_port))
listener.listen(1)
listener.settimeout(left())
say("LISTENING")
try:
    conn, (peer_cid, _) = listener.accept()
except OSError as e:
    fail("accept: %s" % e)
conn.settimeout(left())
message = b""
while True:
    chunk = conn.recv(4096)
    if not chunk:
        break
    message += chunk
conn.sendall(b"host-ack")
conn.close()
say("ACCEPTED %d %s" % (peer_cid, message.decode(errors="replace")))

payload = os.urandom(size)
while True:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(left())
    try:
        s.connect((cid, echo_port))
        break
    except OSError as e:
        s.close()
        if time.time() > deadline:
            fail("connect to %d:%d: %s" % (cid, echo_port, e))
        time.sleep(0.5)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
back = b""
while len(back) < size:
    chunk = s.recv(65536)
    if not chunk:
        break
    back += chunk
s.close()
if back != payload:
    fail("echo returned %d bytes, %s" % (len(back), "same prefix" if payload.startswith(back) else "different"))
say("ECHO-OK %d" % size)
