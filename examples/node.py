#!/usr/bin/env python3
"""A halod node written from docs/protocol.md alone (standard library only).

    python3 examples/node.py --gateway 198.19.0.1:7000 --name py1 [--addr IP]
                             [--token-file F] [--serve]

Registers, heartbeats, prints every message from the gateway as one JSON line,
and with --serve answers "<name>\\n" on every port of the routes it serves.
SIGTERM/SIGINT: says bye, prints the gateway's last messages, exits 0.
"""
import argparse, json, signal, socket, sys, threading

p = argparse.ArgumentParser()
for flag in ("--gateway", "--name"):
    p.add_argument(flag, required=True)
for flag in ("--addr", "--token-file"):
    p.add_argument(flag)
p.add_argument("--serve", action="store_true")
args = p.parse_args()

host, port = args.gateway.rsplit(":", 1)
sock = socket.create_connection((host, int(port)))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a bye never waits for an ACK
lines = sock.makefile("r", encoding="utf-8", newline="\n")
send_lock = threading.Lock()
def send(message):
    with send_lock:
        sock.sendall((json.dumps(message, separators=(",", ":")) + "\n").encode())

hello = {"type": "hello", "version": 1, "name": args.name}
if args.addr:
    hello["addr"] = args.addr
if args.token_file:
    hello["token"] = open(args.token_file).read().strip()
send(hello)

listeners = {}  # port -> listening socket, with --serve
def serve(port):
    server = socket.create_server(("0.0.0.0", port), reuse_port=True)
    listeners[port] = server
    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the route moved
            with conn:
                conn.sendall((args.name + "\n").encode())
    threading.Thread(target=accept, daemon=True).start()

def heartbeat(interval):
    while not done.wait(interval):
        try:
            send({"type": "hb"})
        except OSError:
            return

done = threading.Event()  # set on SIGTERM/SIGINT: stop heartbeats, say bye
def leave(*_):
    done.set()
    send({"type": "bye"})  # the gateway answers `moved`, then closes
signal.signal(signal.SIGTERM, leave)
signal.signal(signal.SIGINT, leave)

for line in lines:  # ends when the gateway closes the connection
    print(line.rstrip("\n"), flush=True)
    message = json.loads(line)
    kind = message.get("type")
    if kind == "error":
        print(f"refused: {message['code']}: {message['message']}", file=sys.stderr)
        sys.exit(2)
    if kind == "welcome":
        interval = message["heartbeat_ms"] / 1000
        threading.Thread(target=heartbeat, args=(interval,), daemon=True).start()
    if args.serve and kind in ("welcome", "assigned", "moved"):
        for port in [port for route in message["routes"] for port in route["ports"]]:
            serve(port) if kind != "moved" else listeners.pop(port).close()
sys.exit(0)
