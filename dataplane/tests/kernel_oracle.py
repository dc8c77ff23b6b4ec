#!/usr/bin/env python3
"""Sends probe frames on an interface and prints what comes back.

Used by dataplane/tests/kernel_parse.rs inside a network namespace. Reads
probes from stdin, one per line: frames in hex, separated by commas (several
for the fragments of one datagram). For each probe it sends the frames on the
interface named by argv[1] through an AF_PACKET socket, collects every frame
that arrives with the source MAC argv[2] during argv[3] milliseconds, and
prints them as one line (hex, comma-separated; "-" when none came).
"""
import select
import socket
import sys
import time


def main():
    ifname, peer_mac, wait_ms = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((ifname, 0))
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        for frame in line.split(","):
            s.send(bytes.fromhex(frame))
        got = []
        end = time.monotonic() + wait_ms / 1000
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            data, addr = s.recvfrom(65535)
            # addr[2]: PACKET_OUTGOING (4) for the frames sent here.
            if addr[2] != 4 and data[6:12] == peer_mac:
                got.append(data.hex())
                # Replies come at once: a little longer for a second one, not the whole wait.
                end = min(end, time.monotonic() + 0.005)
        print(",".join(got) if got else "-", flush=True)


if __name__ == "__main__":
    main()
