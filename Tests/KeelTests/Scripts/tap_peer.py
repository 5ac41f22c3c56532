#!/usr/bin/env python3
"""The host end of VirtioNetLinuxTests' tap test, run inside the test's network namespace.

1. accepts one TCP connection on HOST_IP:PORT_IN and reads exactly SIZE bytes (the guest's file),
   printing "RECV-MD5 <md5>";
2. pings the guest with raw ICMP echo requests until 3 replies came, printing "PING-OK <n>";
3. connects to GUEST_IP:PORT_OUT (retrying while the guest's nc -l is not up yet) and sends
   SIZE random bytes, printing "SENT-MD5 <md5>".
Every line is flushed at once; a step that fails prints "FAIL <why>" and exits 1.
"""
import hashlib, os, socket, struct, sys, time

host_ip, guest_ip, port_in, port_out, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
deadline = time.time() + float(sys.argv[6]) if len(sys.argv) > 6 else time.time() + 300


def say(line):
    print(line, flush=True)


def fail(why):
    say("FAIL " + why)
    sys.exit(1)


def left():
    return max(1.0, deadline - time.time())


# 1. guest -> host
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host_ip, port_in))
server.listen(1)
say("LISTENING")
server.settimeout(left())
try:
    conn, _ = server.accept()
except socket.timeout:
    fail("no connection from the guest")
conn.settimeout(60)
md5 = hashlib.md5()
got = 0
while got < size:
    try:
        chunk = conn.recv(min(1 << 20, size - got))
    except socket.timeout:
        fail("guest->host stalled at %d bytes" % got)
    if not chunk:
        fail("guest closed after %d of %d bytes" % (got, size))
    md5.update(chunk)
    got += len(chunk)
conn.close()
server.close()
say("RECV-MD5 " + md5.hexdigest())


# 2. host pings the guest
def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
icmp.settimeout(2)
ident = os.getpid() & 0xFFFF
replies = 0
for seq in range(1, 30):
    body = b"keel-ping-%02d" % seq
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + body), ident, seq) + body
    icmp.sendto(packet, (guest_ip, 0))
    end = time.time() + 2
    while time.time() < end:
        try:
            data, addr = icmp.recvfrom(2048)
        except socket.timeout:
            break
        ihl = (data[0] & 0x0F) * 4
        t, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if addr[0] == guest_ip and t == 0 and rid == ident and rseq == seq and data[ihl + 8:] == body:
            replies += 1
            break
    if replies == 3:
        break
if replies < 3:
    fail("the guest answered %d pings" % replies)
say("PING-OK %d" % replies)

# 3. host -> guest
payload = os.urandom(size)
while True:
    try:
        out = socket.create_connection((guest_ip, port_out), timeout=5)
        break
    except OSError:
        if time.time() > deadline:
            fail("could not connect to the guest's nc -l")
        time.sleep(0.5)
out.settimeout(120)
try:
    out.sendall(payload)
except OSError as e:
    fail("host->guest: %s" % e)
out.close()
say("SENT-MD5 " + hashlib.md5(payload).hexdigest())
