#!/usr/bin/env python3
"""What one send costs on loopback when the peer is idle, against sends made back to back.

The load generator and the bridge share the machine, each on its own core. A send that finds
the peer's process asleep wakes it, and the sender pays for that wake-up; sends made in a row find
it awake. This prints the median CPU cost of a send of a model delta's size (1.7 KB) to a peer
on the other core, back to back and spaced as a call's frames are, over TCP with TCP_NODELAY as
the bridge's sockets have it. It is why the bridge makes the writes of one pass of its event loop
together (`call.pump.Outbox`; docs/cpu.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

FRAME_BYTES = 1700


def connected_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sender, receiver


def start_peer(sender: socket.socket, receiver: socket.socket, cpu: int) -> int:
    """A process on `cpu` that reads whatever arrives until the sender closes."""
    pid = os.fork()
    if pid == 0:
        sender.close()
        os.sched_setaffinity(0, {cpu})
        while receiver.recv(1 << 20):
            pass
        os._exit(0)
    receiver.close()
    return pid


def send_costs(sender: socket.socket, count: int, gap_s: float) -> list[float]:
    """CPU seconds of each of `count` sends, with `gap_s` of busy waiting between them (0: back to back)."""
    frame = b"x" * FRAME_BYTES
    costs = []
    for _ in range(count):
        started = time.thread_time()
        sender.send(frame)
        costs.append(time.thread_time() - started)
        resume_at = time.perf_counter() + gap_s
        while time.perf_counter() < resume_at:
            pass
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=5000)
    parser.add_argument("--sender-cpu", type=int, default=0)
    parser.add_argument("--peer-cpu", type=int, default=1)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.sender_cpu})
    sender, receiver = connected_pair()
    peer = start_peer(sender, receiver, args.peer_cpu)
    for label, gap_s in (("back to back", 0.0), ("0.2 ms apart", 0.0002), ("1 ms apart", 0.001)):
        costs = send_costs(sender, args.sends, gap_s)
        print(f"{label:>13}: median {statistics.median(costs) * 1e6:5.1f} us of CPU per {FRAME_BYTES}-byte send")
    sender.close()
    os.waitpid(peer, 0)


if __name__ == "__main__":
    main()
