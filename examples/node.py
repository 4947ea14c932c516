#!/usr/bin/env python3
"""A halod node written from docs/protocol.md alone (standard library only).

    python3 examples/node.py --gateway 198.19.0.1:7000 --name py1 [--addr IP]
                             [--token-file F] [--serve]

Registers, heartbeats, prints every message from the gateway as one JSON line, and with
--serve answers "<name>\\n" on every port of its routes and keeps the connection open until
the client closes it. A `moved` closes the lost routes' listeners at once and their open
connections at once, or with `drain_ms` spread over the drain window (`drain_done` closes
what is left). Reconnects with backoff (100 ms doubling to 5 s, plus up to 50 % jitter)
when the connection is lost or refused with duplicate_name/full; exits 2 on other
refusals. SIGTERM/SIGINT: bye, then exit 0 once the gateway closed the connection (after
the drain, at most drain_ms + 5 s); a second SIGTERM/SIGINT exits at once."""
import argparse, contextlib, json, random, signal, socket, sys, threading, time

p = argparse.ArgumentParser()
for flag in ("--gateway", "--name", "--addr", "--token-file"):
    p.add_argument(flag, required=flag in ("--gateway", "--name"))
p.add_argument("--serve", action="store_true")
args = p.parse_args()
gateway_host, gateway_port = args.gateway.rsplit(":", 1)
hello = {"type": "hello", "version": 1, "name": args.name, "addr": args.addr,
         "token": args.token_file and open(args.token_file).read().strip()}
hello = {key: value for key, value in hello.items() if value}  # leave out what is not given
send_lock, clients_lock = threading.Lock(), threading.Lock()
leaving = threading.Event()  # SIGTERM/SIGINT came
connection, listeners = [], {}  # the registered socket; port -> listening socket
clients, give_up = {}, []  # port -> open client sockets; the timer that ends the wait after bye

def send(sock, message):
    with send_lock:
        sock.sendall((json.dumps(message, separators=(",", ":")) + "\n").encode())

def serve(port):  # with --serve; listeners are kept across reconnects
    server = listeners[port] = socket.create_server(("0.0.0.0", port), reuse_port=True)
    def hold(conn):  # a push connection: the name, then open until either side closes
        with conn, contextlib.suppress(OSError):
            conn.sendall((args.name + "\n").encode())
            while conn.recv(4096):
                pass
        with clients_lock:
            clients[port].discard(conn)
    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the route moved
            with clients_lock:
                clients.setdefault(port, set()).add(conn)
            threading.Thread(target=hold, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()

def shut(sock):  # wakes whoever reads it; its reader closes it
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)

def close_clients(ports, seconds=0):  # spread over `seconds`, one at a time
    with clients_lock:
        conns = [conn for port in ports for conn in clients.get(port, ())]
    random.shuffle(conns)
    for conn in conns:
        time.sleep(seconds / (len(conns) + 1))
        shut(conn)

def give_up_after(sock, seconds):  # after bye: stop waiting for the gateway to close
    for timer in give_up:
        timer.cancel()
    give_up[:] = [threading.Timer(seconds, shut, args=(sock,))]
    give_up[0].daemon = True
    give_up[0].start()

def heartbeat(sock, interval, stop):
    with contextlib.suppress(OSError):  # a lost connection: the reading loop notices it
        while not stop.wait(interval):
            send(sock, {"type": "hb"})

def leave(*signal_args):
    if signal_args and leaving.is_set():
        sys.exit(0)  # asked again: do not wait for the gateway
    leaving.set()
    for sock in connection:  # the gateway answers `moved` (then `drain_done`), then closes
        with contextlib.suppress(OSError):
            send(sock, {"type": "bye"})
            give_up_after(sock, 5)
for number in (signal.SIGTERM, signal.SIGINT):
    signal.signal(number, leave)

def session(backoff):
    """One connection; returns the exit code, or None to reconnect."""
    sock = socket.create_connection((gateway_host, int(gateway_port)), timeout=10)
    stop = threading.Event()  # ends this session's heartbeats
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a bye never waits for an ACK
    try:
        send(sock, hello)
        for line in sock.makefile("r", encoding="utf-8", newline="\n"):  # ends on close
            print(line.rstrip("\n"), flush=True)
            message = json.loads(line)
            kind = message.get("type")
            if kind == "error":
                code = message["code"]
                print(f"refused: {code}: {message['message']}", file=sys.stderr)
                return None if code in ("duplicate_name", "full") else 0 if code == "drained" else 2
            if kind == "welcome":
                backoff[0], connection[:] = 0.1, [sock]
                threading.Thread(target=heartbeat, daemon=True,
                                 args=(sock, message["heartbeat_ms"] / 1000, stop)).start()
                if leaving.is_set():
                    leave()  # the signal came before there was a connection to say bye on
            ports = {port for route in message.get("routes", []) for port in route["ports"]}
            if kind in ("welcome", "moved"):  # welcome: the full set; moved: what was lost
                for port in set(listeners) - ports if kind == "welcome" else ports & set(listeners):
                    shut(listeners[port])  # wakes its accept: the port stops listening
                    listeners.pop(port).close()
            if kind == "moved":  # their open connections: now, or spread over the drain
                drain = message.get("drain_ms", 0) / 1000
                if drain:
                    print(f"draining {len(message['routes'])} routes for {drain:g} s",
                          file=sys.stderr)
                    if leaving.is_set():
                        give_up_after(sock, drain + 5)
                threading.Thread(target=close_clients, args=(ports, drain), daemon=True).start()
            if kind == "drain_done":
                close_clients(ports)
            if args.serve and kind in ("welcome", "assigned"):
                for port in ports - set(listeners):
                    serve(port)
        return 0 if leaving.is_set() else None
    finally:
        stop.set()
        connection.clear()
        sock.close()

backoff = [0.1]
while not leaving.is_set():
    try:
        code = session(backoff)
    except OSError as error:
        code = None
        if not leaving.is_set():
            print(f"gateway {args.gateway}: {error}; retrying", file=sys.stderr)
    if code is not None:
        sys.exit(code)
    leaving.wait(backoff[0] + random.uniform(0, backoff[0] / 2))
    backoff[0] = min(backoff[0] * 2, 5.0)
