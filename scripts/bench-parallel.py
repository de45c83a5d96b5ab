#!/usr/bin/env python3
"""Aggregate generation speed with 1 client and with several at once, through stove's HTTP API.

    scripts/bench-parallel.py [--stove PATH] [--clients 1,4] [--tokens 128] [--rounds 3] [--min-speedup 1.2]

Starts PATH (a bundle, or the engine with `-- --model X.gguf`; default: the default model served by a
release build), waits for /health, then for each client count runs that many streaming requests at once
(different prompts, temperature 0) and reports completion tokens per second of wall time, summed over
clients, best of --rounds. Fails when the most clients do not beat one client by --min-speedup: the point
of continuous batching. Standard library only.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_command():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/stove/target"))
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": target})
    model = subprocess.run([os.path.join(ROOT, "scripts/fetch-model.sh")], check=True, capture_output=True, text=True).stdout.strip()
    return [os.path.join(target, "release/stove"), "serve", "--model", model]


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=600)


def one_request(url, prompt, tokens, results, index):
    """Streams one answer; records its completion tokens from the usage chunk."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    completion = 0
    with post(url + "/v1/chat/completions", body) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    completion = chunk["usage"]["completion_tokens"]
    results[index] = completion


def run_round(url, clients, tokens, round_no):
    results = [0] * clients
    # Prompts differ per client and round, so no answer comes from another's cache.
    prompts = [f"Write a long story about kitchen number {round_no * 100 + i}." for i in range(clients)]
    threads = [threading.Thread(target=one_request, args=(url, p, tokens, results, i)) for i, p in enumerate(prompts)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return sum(results) / elapsed, sum(results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stove", help="bundle to run (default: a release build serving the default model)")
    parser.add_argument("--clients", default="1,4", help="client counts to compare, comma-separated")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-speedup", type=float, default=1.2)
    parser.add_argument("extra", nargs="*", help="more stove arguments (after --)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    command = [args.stove] if args.stove else default_command()
    command += ["--port", "0", "--no-browser", "--parallel", str(max(counts))] + args.extra
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().split(" at ")[1].rstrip("/")
        while True:
            try:
                with urllib.request.urlopen(url + "/health") as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        run_round(url, 1, 16, -1)  # warm-up: pages in the weights
        speeds = {}
        for clients in counts:
            best = max(run_round(url, clients, args.tokens, r)[0] for r in range(args.rounds))
            speeds[clients] = best
            print(f"{clients} client(s): {best:7.1f} tokens/s in aggregate (best of {args.rounds})")
    finally:
        server.terminate()
        server.wait()
    most = max(counts)
    speedup = speeds[most] / speeds[min(counts)]
    print(json.dumps({"tokens_per_second": speeds, "speedup": round(speedup, 2)}))
    if speedup < args.min_speedup:
        print(f"FAIL: {most} clients are only {speedup:.2f}x one client (want {args.min_speedup}x)", file=sys.stderr)
        sys.exit(1)
    print(f"{most} clients: {speedup:.2f}x one client")


if __name__ == "__main__":
    main()
