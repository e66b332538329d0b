"""Mooncake Store over TCP, the baseline of `tierkv-bench service`.

Starts `mooncake_master`, one segment-holding client (all data lives in its segment,
`protocol="tcp"`, metadata `P2PHANDSHAKE`) and, per measurement, `clients` benchmark
processes that hold no data: every byte crosses loopback, as it does for tierkv and
Redis. Each benchmark process puts `ops` blocks then gets them back (`put_from` /
`get_into` on a registered buffer, Mooncake's zero-copy calls), between barriers; the
throughput is all bytes over the wall time of the slowest process. CPU seconds of the
master and the holder are read from /proc.

Prints one JSON object: {"rows": [{"block": B, "clients": C, "round": R, "op":
"put"|"get", "bytes": N, "wall_s": S, "latencies_s": [...], "server_cpu_s": X}]}.
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def setup_store(master, segment, local_buffer):
    from mooncake.store import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    rc = store.setup(
        "127.0.0.1",
        "P2PHANDSHAKE",
        segment,
        local_buffer,
        "tcp",
        "",
        master,
    )
    if rc != 0:
        raise RuntimeError(f"mooncake setup failed: {rc}")
    return store


def holder(master, segment, ready, stop):
    store = setup_store(master, segment, 16 << 20)
    ready.set()
    stop.wait()
    store.close()


def worker(master, block, ops, tag, start, done, out):
    import ctypes

    store = setup_store(master, 0, max(64 << 20, 2 * block))
    buf = ctypes.create_string_buffer(os.urandom(block), block)
    addr = ctypes.addressof(buf)
    rc = store.register_buffer(addr, block)
    if rc != 0:
        raise RuntimeError(f"register_buffer failed: {rc}")
    result = {}
    for op in ("put", "get"):
        start.wait()
        lat = []
        t0 = time.perf_counter()
        for i in range(ops):
            key = f"{tag}-{i}"
            t = time.perf_counter()
            if op == "put":
                rc = store.put_from(key, addr, block)
                if rc != 0:
                    raise RuntimeError(f"put_from {key}: {rc}")
            else:
                n = store.get_into(key, addr, block)
                if n != block:
                    raise RuntimeError(f"get_into {key}: {n}")
            lat.append(time.perf_counter() - t)
        result[op] = (t0, time.perf_counter(), lat)
        done.wait()
    out.put(result)
    store.close()


def measure(master, holder_pid, master_pid, block, clients, ops, rnd):
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(master, block, ops, f"b{block}-c{clients}-r{rnd}-w{w}", start, done, out))
        for w in range(clients)
    ]
    for p in procs:
        p.start()
    cpu = {}
    for op in ("put", "get"):
        before = [cpu_seconds(holder_pid), cpu_seconds(master_pid)]
        start.wait()
        done.wait()
        after = [cpu_seconds(holder_pid), cpu_seconds(master_pid)]
        if None not in before + after:
            cpu[op] = sum(after) - sum(before)
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    rows = []
    for op in ("put", "get"):
        t0 = min(r[op][0] for r in results)
        t1 = max(r[op][1] for r in results)
        rows.append(
            {
                "block": block,
                "clients": clients,
                "round": rnd,
                "op": op,
                "bytes": block * ops * clients,
                "wall_s": t1 - t0,
                "latencies_s": [x for r in results for x in r[op][2]],
                "server_cpu_s": cpu.get(op),
            }
        )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--clients", required=True)
    ap.add_argument("--ops", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    clients = [int(x) for x in args.clients.split(",")]
    exe = shutil.which("mooncake_master")
    if exe is None:
        import mooncake

        exe = os.path.join(os.path.dirname(mooncake.__file__), "mooncake_master")
    port = free_port()
    master_proc = subprocess.Popen(
        [exe, "--port", str(port), "--default_kv_lease_ttl", "600000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    master = f"127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or master_proc.poll() is not None:
                sys.exit("mooncake_master did not start")
            time.sleep(0.1)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    # Room for every block of every measurement.
    total = sum(s * args.ops * c * args.rounds for s in sizes for c in clients)
    segment = max(1 << 30, int(total * 1.25))
    hold = ctx.Process(target=holder, args=(master, segment, ready, stop))
    hold.start()
    if not ready.wait(60):
        sys.exit("the Mooncake segment holder did not start")
    rows = []
    try:
        for block in sizes:
            for c in clients:
                for r in range(args.rounds):
                    rows.extend(measure(master, hold.pid, master_proc.pid, block, c, args.ops, r))
    finally:
        stop.set()
        hold.join(30)
        master_proc.terminate()
        master_proc.wait(10)
    json.dump({"rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
