"""Embeddings: the worker's ``POST /v1/embeddings`` beside llama-server ``--embeddings``.

Both servers get the worker's built-in all-MiniLM-L6-v2 GGUF (``minilm_path()``) and all
cores. llama-server runs ``--embeddings --pooling mean -b 2048 -ub 2048 -np 8 -c 4096``: a
512-token input (the model's training context) fits one ubatch and one slot's context, and
8 slots serve 8 clients. The worker runs with its defaults (inputs of many requests packed into
one ``llama_decode``: up to 64 sequences, ``GEMMA_EMBEDDING_BATCH_TOKENS``, 512 tokens by default).

Each point is N concurrent clients (httpx, asyncio, keep-alive connections opened before the
clock starts), each sending OpenAI requests (``encoding_format: float``) of B inputs back to
back for a fixed time; the figure is inputs embedded per second. The inputs are a fixed list of
short sysadmin-style sentences (10-30 tokens), cycled. Every round runs every point on both
servers, in ``--slices`` slices of its time that alternate between them (ABBA...: the machine's
speed drifts within minutes, and so both get the same share of it), who goes first alternating
between rounds; then one request of 256 inputs alone on each (the
throughput of a single large batch, without per-request overhead). Figures are medians over
rounds; ratios are worker / llama-server in the same run. Before the rounds, both servers
embed the sentences and one ~510-token input: the minimum cosine between their vectors is
printed (it must be >= 0.999).

    .venv/bin/python bench/embeddings.py
    .venv/bin/python bench/embeddings.py --quick                 # 1 short round: a smoke run
    .venv/bin/python bench/embeddings.py --rounds 5 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import numpy as np

from _common import free_port, server_process, worker_process
from compare_llama_server import llama_server_binary
from gemma_worker.engine.minilm import minilm_path

MODEL = "all-minilm"
#: Short, varied sysadmin-style inputs (10-30 tokens each with MiniLM's WordPiece vocabulary).
SENTENCES = [
    "Restart nginx after editing the site configuration in /etc/nginx/sites-available.",
    "The disk on /var is 97% full because journald kept three months of logs.",
    "Rotate the TLS certificate before it expires next Tuesday at midnight UTC.",
    "sshd refuses password logins; add your public key to ~/.ssh/authorized_keys.",
    "Why does the cron job run twice when the server's timezone is set to Europe/Paris?",
    "Postgres replication lag grew to forty seconds during the nightly backup.",
    "Mount the NFS share read-only and add it to /etc/fstab with the noatime option.",
    "The OOM killer stopped the Java service at 03:12; raise its memory limit.",
    "Check which process holds port 8080 with ss -ltnp before starting the container.",
    "Upgrade the kernel, then reboot the nodes one at a time to keep quorum.",
    "DNS resolution fails inside the container but works fine on the host.",
    "Set vm.swappiness to 10 in /etc/sysctl.d and reload it with sysctl --system.",
    "The load balancer marks the backend unhealthy because /healthz returns 503.",
    "Grant the deploy user sudo rights for systemctl restart app.service only.",
    "Logrotate compresses the old files but the application keeps writing to the deleted one.",
    "Increase the open file limit for the database to 65536 in its systemd unit.",
    "A stale lock file in /var/lib/dpkg blocks apt from installing updates.",
    "Firewall rule: allow TCP 443 from the office network, drop everything else.",
    "The RAID array is degraded; replace the failed disk in bay three and resync.",
    "Prometheus alerts on high CPU steal time on the shared virtual machines.",
    "Back up /etc and the database dump to the offsite bucket every night at two.",
    "Docker images fill the root partition; prune unused images weekly.",
    "The clock drifted by two minutes because chronyd could not reach its NTP servers.",
    "Kubernetes evicts pods from the node when ephemeral storage runs low.",
    "Use rsync with --delete to mirror the release directory to the web servers.",
    "SELinux denies httpd access to the new document root; fix the file context.",
    "Redis latency spikes every hour when it writes its RDB snapshot to disk.",
    "Create a swap file of four gigabytes and enable it at boot.",
    "The VPN tunnel drops every eight hours when the IPsec keys are renegotiated.",
    "Find files larger than one gigabyte under /home with find -size +1G.",
    "Journalctl shows repeated segfaults in the PHP worker after the last update.",
    "Pin the package version so unattended upgrades do not replace the patched build.",
    "Terraform plan wants to recreate the load balancer because a tag changed.",
    "The mail queue holds ten thousand messages after the relay rejected our IP.",
    "Enable HTTP/2 and gzip compression in the reverse proxy for static assets.",
    "Ansible fails on the new hosts because Python is not installed there yet.",
    "High iowait on the database server points to the slow network storage.",
    "Add a health check that restarts the service if it stops answering on its socket.",
    "Users report 502 errors whenever the upstream application reloads its workers.",
    "Move the home directories to the new volume and update the users' paths.",
]
#: (clients, inputs per request)
POINTS = [(1, 1), (1, 32), (8, 1), (8, 32)]
BIG_BATCH = 256
#: Cores that other processes may take during a window before its figures are called noisy.
OTHER_LOAD_LIMIT = 0.1


def batch_of(offset: int, size: int) -> list[str]:
    return [SENTENCES[(offset + i) % len(SENTENCES)] for i in range(size)]


async def embed(http: httpx.AsyncClient, base: str, inputs: list[str]) -> np.ndarray:
    """One OpenAI embeddings request; the vectors in input order."""
    body = {"input": inputs, "model": MODEL, "encoding_format": "float"}
    r = await http.post(f"{base}/v1/embeddings", json=body)
    if r.status_code != 200:
        raise RuntimeError(f"{base}: HTTP {r.status_code}: {r.text[:200]!r}")
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    if len(data) != len(inputs):
        raise RuntimeError(f"{base}: {len(data)} vectors for {len(inputs)} inputs")
    return np.array([d["embedding"] for d in data], dtype=np.float64)


def _busy_ticks() -> tuple[int, int]:
    """(CPU ticks busy on the whole machine, ticks of this process and its children: the two
    servers), from /proc; (0, 0) where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        machine = sum(v) - v[3] - v[4]  # all but idle and iowait (steal counts as busy)
        me, own = os.getpid(), 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry) == me or int(fields[1]) == me:
                own += int(fields[11]) + int(fields[12])  # utime + stime
        return machine, own
    except OSError:
        return 0, 0


class CpuMeter:
    """Over a window: the bench client's CPU share (of one core) and the CPU that processes
    other than the bench and the two servers took (in cores): when that is not ~0, the
    figures of that window are disturbed."""

    def __init__(self) -> None:
        self.cpu0, self.ticks0, self.t0 = time.process_time(), _busy_ticks(), time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        """(elapsed s, client CPU share, other load in cores)."""
        elapsed = time.perf_counter() - self.t0
        client = (time.process_time() - self.cpu0) / elapsed
        (m0, o0), (m1, o1) = self.ticks0, _busy_ticks()
        other = max(0, (m1 - m0) - (o1 - o0)) / os.sysconf("SC_CLK_TCK") / elapsed
        return elapsed, client, other


@dataclass
class Run:
    """One point on one server: inputs/s, request latencies, the client's CPU share and the
    other processes' load during the window."""

    inputs_per_s: float
    latencies: list[float] = field(default_factory=list)
    client_cpu: float = 0.0
    other_load: float = 0.0
    #: Inputs embedded, and the seconds they took (the window).
    inputs: int = 0
    seconds: float = 0.0


def merged(slices: list[Run]) -> Run:
    """The slices of one point on one server as one run: all their inputs over all their
    time; the busiest slice's other load."""
    inputs, seconds = sum(r.inputs for r in slices), sum(r.seconds for r in slices)
    return Run(
        inputs / seconds,
        [x for r in slices for x in r.latencies],
        sum(r.client_cpu * r.seconds for r in slices) / seconds,
        max(r.other_load for r in slices),
        inputs,
        seconds,
    )


async def throughput(base: str, clients: int, size: int, duration: float) -> Run:
    """``clients`` closed-loop clients sending ``size`` inputs per request for ``duration`` s."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        # One request per client first: the connections are open before the clock starts.
        await asyncio.gather(*(embed(http, base, batch_of(c, 1)) for c in range(clients)))
        done = 0
        latencies: list[float] = []
        meter = CpuMeter()
        deadline = time.perf_counter() + duration

        async def client(c: int) -> None:
            nonlocal done
            offset = c * 5
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await embed(http, base, batch_of(offset, size))
                latencies.append(time.perf_counter() - t0)
                done += size
                offset += size

        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed, client_cpu, other = meter.stop()
    return Run(done / elapsed, latencies, client_cpu, other, done, elapsed)


async def big_batch(base: str) -> Run:
    """One request of ``BIG_BATCH`` inputs alone."""
    async with httpx.AsyncClient(timeout=600) as http:
        await embed(http, base, batch_of(0, 1))
        meter = CpuMeter()
        await embed(http, base, batch_of(3, BIG_BATCH))
        elapsed, client_cpu, other = meter.stop()
    return Run(BIG_BATCH / elapsed, [elapsed], client_cpu, other)


async def token_counts(http: httpx.AsyncClient, llama: str, texts: list[str]) -> list[int]:
    """Tokens of each text (without [CLS]/[SEP]), from llama-server's ``/tokenize``."""
    out = []
    for text in texts:
        r = await http.post(f"{llama}/tokenize", json={"content": text})
        r.raise_for_status()
        out.append(len(r.json()["tokens"]))
    return out


async def check_vectors(servers: dict[str, str]) -> None:
    """Both servers embed the sentences and a ~510-token input; print the minimum cosine."""
    llama, worker = servers["llama-server"], servers["worker"]
    async with httpx.AsyncClient(timeout=600) as http:
        counts = await token_counts(http, llama, SENTENCES)
        long_parts: list[str] = []
        total = 0
        for text, n in zip(SENTENCES * 20, counts * 20, strict=True):
            if total + n > 510:  # 510 + [CLS] + [SEP] = the model's 512
                break
            long_parts.append(text)
            total += n
        long_text = " ".join(long_parts)
        (long_tokens,) = await token_counts(http, llama, [long_text])
        inputs = [*SENTENCES, long_text]
        a = await embed(http, base=llama, inputs=inputs)
        b = await embed(http, base=worker, inputs=inputs)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(
        f"inputs: {len(SENTENCES)} sentences of {min(counts)}-{max(counts)} tokens "
        f"(mean {statistics.mean(counts):.1f}), cycled; long check input {long_tokens} tokens",
        flush=True,
    )
    print(
        f"cosine worker vs llama-server over {len(inputs)} inputs: min {cos.min():.6f} "
        f"(sentences {cos[:-1].min():.6f}, long input {cos[-1]:.6f})"
        + ("" if cos.min() >= 0.999 else "  <-- BELOW 0.999"),
        flush=True,
    )


def label(clients: int, size: int) -> str:
    return f"{clients} client{'s' if clients > 1 else ''} x {size} input{'s' if size > 1 else ''}"


async def run(args: argparse.Namespace, servers: dict[str, str]) -> None:
    await check_vectors(servers)
    for base in servers.values():  # warm-up: first allocations, the worker's lazy model load
        await throughput(base, 8, 32, 1.0)
    names = list(servers)
    points = [(c, s) for c, s in POINTS if args.points is None or f"{c}x{s}" in args.points]
    big = args.points is None or "big" in args.points
    plan = [label(c, s) for c, s in points] + ([f"1 request of {BIG_BATCH} inputs alone"] * big)
    results: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for (clients, size), scenario in zip(points, plan, strict=False):
            # The point's time is cut into slices that alternate between the servers, so a
            # drift of the machine's speed within the round (10-25% within minutes on these
            # VMs) falls on both alike.
            slices: dict[str, list[Run]] = defaultdict(list)
            for k in range(args.slices):
                for name in order if k % 2 == 0 else order[::-1]:
                    part = await throughput(
                        servers[name], clients, size, args.duration / args.slices
                    )
                    slices[name].append(part)
            for name in order:
                res = merged(slices[name])
                results[scenario, name].append(res)
                print(
                    f"  round {r + 1} {scenario:<30} {name:<13} {res.inputs_per_s:8.1f} inputs/s"
                    f"  (median request {statistics.median(res.latencies) * 1e3:7.1f} ms, "
                    f"{len(res.latencies)} requests, client CPU {res.client_cpu:4.0%}, "
                    f"other load {res.other_load:.2f} cores)",
                    flush=True,
                )
        for name in order if big else ():
            res = await big_batch(servers[name])
            results[plan[-1], name].append(res)
            print(
                f"  round {r + 1} {plan[-1]:<30} {name:<13} {res.inputs_per_s:8.1f} inputs/s"
                f"  ({res.latencies[0] * 1e3:7.1f} ms, other load {res.other_load:.2f} cores)",
                flush=True,
            )
    print(f"\nmedians over {args.rounds} rounds; ratio = worker / llama-server (>1 = worker ahead)")
    print(
        f"{'scenario (inputs/s)':<34}{'llama-server':>14}{'worker':>10}{'ratio':>8}"
        "   ratio in each round"
    )
    for scenario in plan:
        runs = {n: [x.inputs_per_s for x in results[scenario, n]] for n in names}
        meds = {n: statistics.median(v) for n, v in runs.items()}
        ratio = meds["worker"] / meds["llama-server"]
        each = " ".join(
            f"{w / ls:.2f}" for w, ls in zip(runs["worker"], runs["llama-server"], strict=True)
        )
        print(
            f"{scenario:<34}{meds['llama-server']:>14.1f}{meds['worker']:>10.1f}{ratio:>7.2f}x"
            f"   {each}"
        )
    disturbed = [x for runs in results.values() for x in runs if x.other_load > OTHER_LOAD_LIMIT]
    if disturbed:
        worst = max(x.other_load for x in disturbed)
        print(
            f"\nWARNING: {len(disturbed)} of {sum(map(len, results.values()))} windows ran beside "
            f"other processes (> {OTHER_LOAD_LIMIT} cores, up to {worst:.2f}): noisy figures"
        )


def llama_flags(threads: str) -> list[str]:
    """llama-server's flags in the embedding benches (the module's docstring says why)."""
    return [
        "--embeddings", "--pooling", "mean", "-b", "2048", "-ub", "2048",
        "-np", "8", "-c", "4096", "-t", threads, "-tb", threads,
    ]  # fmt: skip


def start_llama_server(stack: ExitStack, threads: str) -> str:
    """llama-server with :func:`llama_flags` on the built-in MiniLM GGUF until ``stack``
    closes; its base URL once it is healthy."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [llama_server_binary(), "-m", str(minilm_path()), *llama_flags(threads)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    stack.enter_context(server_process(argv, f"{base}/health"))
    return base


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per point")
    parser.add_argument(
        "--slices",
        type=lambda v: max(1, int(v)),
        default=4,
        help="each point's time is cut into this many slices, alternating between the servers",
    )
    parser.add_argument(
        "--points",
        type=lambda v: set(v.split(",")),
        default=None,
        help="only these points, e.g. 1x1,8x1,big (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s points")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3.0

    model = str(minilm_path())
    threads = str(os.cpu_count() or 1)
    worker_env = {"GEMMA_N_THREADS": threads}
    batch_tokens = os.environ.get("GEMMA_EMBEDDING_BATCH_TOKENS", "512 (default)")
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp, ExitStack() as stack:
        llama = start_llama_server(stack, threads)
        worker = stack.enter_context(
            worker_process(free_port(), {**worker_env, "GEMMA_DATA_DIR": f"{tmp}/data"})
        )
        print(f"model: {model}", flush=True)
        print(f"llama-server: {' '.join(llama_flags(threads))}", flush=True)
        print(
            f"worker: gemma-worker --mode daemon, GEMMA_N_THREADS={threads}, "
            f"GEMMA_EMBEDDING_BATCH_TOKENS={batch_tokens} (up to 64 sequences per llama_decode)",
            flush=True,
        )
        print(f"{args.rounds} interleaved rounds of {args.duration:g} s per point", flush=True)
        asyncio.run(run(args, {"llama-server": llama, "worker": worker}))


if __name__ == "__main__":
    main()
