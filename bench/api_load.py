"""Benchmark: the lookup API under load, against a bare Litestar route in the same run.

    .venv/bin/python bench/api_load.py [--data-dir DIR] [--duration 10]

Needs `wrk` (Debian package). With MovieLens 100K live in the embedded store (a fresh data
dir runs batch_retrain first), wrk -t2 asks for random users' top-10: throughput at 200
connections, p99 latency at 20; the bare route (bench/bare_app.py, same server) is measured
the same way in the same run. Then, on the same API process, random users' top-10 in a
random one of the catalog's categories (`category=`, answers cached per user, k and category
after their first request) and with a random item excluded (`exclude=`, never cached: every
request filters the user's cached decoded list); each one's cost per request is given as a
multiple of the unfiltered one's (target for the category: at most 2). Phase 2 keeps four
clients asking while a new version (the live lists reversed) is written and switched live,
and counts failed requests, responses not entirely from the version they name, and
old-version answers to requests started after the switch and the cache's bound (the store's
change_check_interval_s); it then makes the original version live again (the extra version
stays in the registry of a --data-dir).

Phase 3 asks for 1,000,000 distinct unknown users' top-100 (each one a store lookup and the
shared popular list) and reports the API's peak resident memory (target: 500 MB) beside the
cached phase's. Phase 4 writes 1,000,000 users' synthetic top-10 lists straight into a new
SQLite store and asks for random users, so most requests miss the response cache (target:
half the bare route's throughput, no errors). Phases 3 and 4 log their served lists to a
scratch folder, deleted afterwards. Phase 5 POSTs sessions of 10 random catalogue items to
/recommendations, each scored on the fly by the live version (target: p99 ≤ 20 ms at 20
connections). `--phases` runs some of phases 2-5 (phase 1, the reference, always runs). The
last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LUA = """
local users = {%s}
request = function()
  return wrk.format("GET", "/users/" .. users[math.random(#users)] .. "/recommendations")
end
"""

FILTERED_LUA = """
local users = {%s}
local filters = {%s}
request = function()
  return wrk.format("GET", "/users/" .. users[math.random(#users)] ..
    "/recommendations?" .. filters[math.random(#filters)])
end
"""

UNKNOWN_LUA = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread", threads)
end
init = function(args)
  prefix = "/users/stranger-" .. args[1] .. "-" .. thread .. "-"
end
local asked = 0
request = function()
  asked = asked + 1
  return wrk.format("GET", prefix .. asked .. "/recommendations?k=100")
end
"""
RANDOM_USER_LUA = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
init = function()
  math.randomseed(seed * 7919)
end
request = function()
  return wrk.format("GET", "/users/user" .. math.random(%d) .. "/recommendations")
end
"""
SESSION_LUA = """
local items = {%s}
request = function()
  local picked = {}
  for n = 1, 10 do
    picked[n] = '"' .. items[math.random(#items)] .. '"'
  end
  local body = '{"k": 10, "items": [' .. table.concat(picked, ",") .. ']}'
  return wrk.format("POST", "/recommendations", {["Content-Type"] = "application/json"}, body)
end
"""
MILLION = 1_000_000
PHASES = ("switch", "unknown", "million", "sessions")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, help="a data dir with a live model already")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"of {', '.join(PHASES)}")
    args = parser.parse_args()
    phases = set(args.phases.split(","))

    from tests.servers import free_port

    data_dir = args.data_dir or _fresh_data_dir()
    users = _user_ids(data_dir)
    script = Path(tempfile.mkdtemp()) / "users.lua"
    script.write_text(LUA % ", ".join(f'"{user}"' for user in users))

    filters = _filter_scripts(data_dir, users, script.parent)

    figures: dict[str, float] = {}
    for name, app in (("bare", "bench.bare_app:app"), ("api", "api.app:app")):
        port = free_port()
        with _server(args.server, app, port, data_dir) as server:
            url = f"http://127.0.0.1:{port}"
            _wrk(url, 50, 3, script)  # warm-up
            busy = _wrk(url, 200, args.duration, script)
            calm = _wrk(url, 20, args.duration, script)
            peak_mb = _peak_rss_mb(server.pid)
            if name == "api":
                for kind, filtered_script in filters.items():
                    _wrk(url, 50, 3, filtered_script)  # warm-up
                    filtered = _wrk(url, 200, args.duration, filtered_script)
                    figures[f"api_{kind}_rps_200c"] = filtered["rps"]
                    figures[f"api_{kind}_errors_200c"] = filtered["errors"]
                    figures[f"{kind}_to_unfiltered_cost"] = round(busy["rps"] / filtered["rps"], 3)
        figures[f"{name}_rps_200c"] = busy["rps"]
        figures[f"{name}_errors_200c"] = busy["errors"]
        figures[f"{name}_p50_ms_20c"] = calm["p50_ms"]
        figures[f"{name}_p99_ms_20c"] = calm["p99_ms"]
        figures[f"{name}_rps_20c"] = calm["rps"]
        figures[f"{name}_peak_rss_mb"] = peak_mb
    figures["api_to_bare_throughput"] = round(figures["api_rps_200c"] / figures["bare_rps_200c"], 3)
    if "switch" in phases:
        figures.update(_switch_under_load(args.server, data_dir, users))
    if "unknown" in phases:
        figures.update(_unknown_users(args.server, data_dir))
    if "million" in phases:
        figures.update(_million_users(args.server, args.duration))
        figures["million_users_to_bare_throughput"] = round(
            figures["million_users_rps_200c"] / figures["bare_rps_200c"], 3
        )
    if "sessions" in phases:
        figures.update(_sessions(args.server, data_dir, args.duration))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


def _filter_scripts(data_dir: Path, users: list[str], folder: Path) -> dict[str, Path]:
    """wrk scripts asking for random users' lists in a random category of the store's catalog,
    and without a random catalog item."""
    from resources.store import SqliteRecommendationStore

    catalog = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite")).catalog()
    if catalog is None:
        raise SystemExit(f"{data_dir} has no catalog in its store: run batch_retrain again")
    categories = sorted({c for entry in catalog.entries for c in entry["categories"]})
    item_ids = [entry["item_id"] for entry in catalog.entries]
    queries = {
        "category_filtered": [urlencode({"category": category}) for category in categories],
        "excluding": [urlencode({"exclude": item}) for item in item_ids],
    }
    scripts = {}
    for kind, asked in queries.items():
        scripts[kind] = folder / f"{kind}.lua"
        scripts[kind].write_text(
            FILTERED_LUA
            % (", ".join(f'"{user}"' for user in users), ", ".join(f'"{q}"' for q in asked))
        )
    return scripts


def _switch_under_load(
    server: str, data_dir: Path, users: list[str], clients: int = 4
) -> dict[str, float]:
    """Phase 2: clients keep asking while a new version (every list reversed, so a response
    shows which version it came from) is written and made live."""
    from resources.store import SqliteRecommendationStore
    from tests.servers import free_port

    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    old = store.live_version()
    lists = {user: store.lookup(user, 100).items for user in users}
    expected = {old: lists, f"{old}-switch": {u: items[::-1] for u, items in lists.items()}}
    new = f"{old}-switch"
    answers: list[tuple[float, str, bool]] = []
    failures: list[int] = []
    stop = threading.Event()

    def ask(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                user = rng.choice(users)
                started = time.monotonic()
                response = client.get(f"/users/{user}/recommendations", params={"k": 100})
                if response.status_code != 200:
                    failures.append(response.status_code)
                    continue
                body = response.json()
                served = [item["item_id"] for item in body["items"]]
                whole = served == [i["item_id"] for i in expected[body["model_version"]][user]]
                answers.append((started, body["model_version"], whole))

    port = free_port()
    with _server(server, "api.app:app", port, data_dir):
        url = f"http://127.0.0.1:{port}"
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        store.register(new, {**store.version(old).info, "note": "bench switch"})
        store.write_version(new, list(expected[new].items()), [])
        store.activate(new)
        switched = time.monotonic()
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join()
    store.activate(old)
    bound = switched + store.change_check_interval_s
    late = [version for started, version, _ in answers if started > bound and version != new]
    return {
        "switch_requests": len(answers) + len(failures),
        "switch_failed_requests": len(failures),
        "switch_mixed_responses": sum(not whole for _, _, whole in answers),
        "switch_old_version_after_switch": len(late),
    }


def _unknown_users(server: str, data_dir: Path) -> dict[str, float]:
    """Phase 3: a million distinct users the model does not know, k = 100."""
    from tests.servers import free_port

    scratch = Path(tempfile.mkdtemp(prefix="reco-api-unknown-"))
    script = scratch / "unknown.lua"
    script.write_text(UNKNOWN_LUA)
    port = free_port()
    store = {"RECO_DATA_DIR": str(scratch), "RECO_SQLITE_PATH": str(data_dir / "reco.sqlite")}
    try:
        with _server(server, "api.app:app", port, data_dir, store) as process:
            url = f"http://127.0.0.1:{port}"
            # Each run's ids are its own (the tag): every request names a new user. The
            # warm-up's rate sets the main run's length, enough for a million ids in all.
            warm_up = _wrk(url, 200, 3, script, "warm-up")
            seconds = max(1, math.ceil((MILLION - warm_up["requests"]) / warm_up["rps"] * 1.2))
            result = _wrk(url, 200, seconds, script, "main")
            peak_mb = _peak_rss_mb(process.pid)
    finally:
        shutil.rmtree(scratch)
    return {
        "unknown_users_distinct_ids": warm_up["requests"] + result["requests"],
        "unknown_users_rps_200c": result["rps"],
        "unknown_users_errors_200c": result["errors"],
        "unknown_users_peak_rss_mb": peak_mb,
    }


def _million_users(server: str, seconds: int) -> dict[str, float]:
    """Phase 4: random users of a million, most of them not in the response cache."""
    from resources.store import SqliteRecommendationStore
    from tests.servers import free_port

    scratch = Path(tempfile.mkdtemp(prefix="reco-api-million-"))
    try:
        store = SqliteRecommendationStore(path=str(scratch / "reco.sqlite"))
        rng = random.Random(0)
        started = time.perf_counter()
        store.register("synthetic", {"family": "als"})
        store.write_version(
            "synthetic",
            (
                (
                    f"user{n}",
                    [
                        {"item_id": str(rng.randrange(30_000)), "score": round(1 - r / 100, 4)}
                        for r in range(10)
                    ],
                )
                for n in range(1, MILLION + 1)
            ),
            [{"item_id": str(n), "score": 1.0} for n in range(100)],
        )
        store.activate("synthetic")
        written_s = time.perf_counter() - started
        script = scratch / "random_users.lua"
        script.write_text(RANDOM_USER_LUA % MILLION)
        port = free_port()
        with _server(server, "api.app:app", port, scratch) as process:
            url = f"http://127.0.0.1:{port}"
            _wrk(url, 50, 3, script)  # warm-up
            before = _cache_counts(url)
            busy = _wrk(url, 200, seconds, script)
            after = _cache_counts(url)
            peak_mb = _peak_rss_mb(process.pid)
    finally:
        shutil.rmtree(scratch)
    hits, misses = (after[n] - before[n] for n in range(2))
    return {
        "million_users_store_write_s": round(written_s, 1),
        "million_users_rps_200c": busy["rps"],
        "million_users_errors_200c": busy["errors"],
        "million_users_cache_miss_ratio": round(misses / max(hits + misses, 1), 3),
        "million_users_peak_rss_mb": peak_mb,
    }


def _sessions(server: str, data_dir: Path, seconds: int) -> dict[str, float]:
    """10-item sessions of random catalogue items, each scored on the fly."""
    import pandas as pd

    from tests.servers import free_port

    items = pd.read_parquet(data_dir / "lake" / "interactions.parquet")["item_id"].unique()
    script = Path(tempfile.mkdtemp()) / "sessions.lua"
    script.write_text(SESSION_LUA % ", ".join(f'"{item}"' for item in items))
    port = free_port()
    with _server(server, "api.app:app", port, data_dir) as process:
        url = f"http://127.0.0.1:{port}"
        _wrk(url, 20, 3, script)  # warm-up: the live version's item side is loaded once
        calm = _wrk(url, 20, seconds, script)
        peak_mb = _peak_rss_mb(process.pid)
    return {
        "session_p50_ms_20c": calm["p50_ms"],
        "session_p99_ms_20c": calm["p99_ms"],
        "session_rps_20c": calm["rps"],
        "session_errors_20c": calm["errors"],
        "session_peak_rss_mb": peak_mb,
    }


def _cache_counts(url: str) -> tuple[float, float]:
    scraped = httpx.get(f"{url}/metrics").text

    def total(name: str) -> float:
        return float(re.search(rf"^reco_api_cache_{name}_total (\S+)$", scraped, re.M).group(1))

    return total("hits"), total("misses")


def _peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process and its descendants, summed: granian
    serves from a worker process it starts."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    peak_kb = 0
    for member in tree:
        status = Path(f"/proc/{member}/status").read_text()
        peak_kb += int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    return round(peak_kb / 1024, 1)


def _fresh_data_dir() -> Path:
    from tests.conftest import dagster_job

    data_dir = Path(tempfile.mkdtemp(prefix="reco-api-load-"))
    env = {**os.environ, "RECO_DATA_DIR": str(data_dir), "SPARK_LOCAL_IP": "127.0.0.1"}
    subprocess.run(
        [sys.executable, "-m", "reco_dagster.datasets", "movielens-100k"], env=env, check=True
    )
    subprocess.run(
        dagster_job("batch_retrain"),
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return data_dir


def _user_ids(data_dir: Path) -> list[str]:
    import pandas as pd

    return sorted(pd.read_parquet(data_dir / "lake" / "interactions.parquet")["user_id"].unique())


@contextmanager
def _server(
    name: str, app: str, port: int, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    from api.serve import header_timeout_s, max_connections

    env = {**os.environ, "RECO_DATA_DIR": str(data_dir), **(extra_env or {})}
    command = {
        "uvicorn": [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        "granian": [
            Path(sys.executable).with_name("granian"),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            # reco-api's settings (api/serve.py)
            "--backpressure",
            str(max_connections()),
            "--http1-header-read-timeout",
            str(round(header_timeout_s() * 1000)),
            app,
        ],
    }[name]
    server = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/users/1/recommendations", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait()


def _wrk(url: str, connections: int, seconds: int, script: Path, *args: str) -> dict[str, float]:
    output = subprocess.run(
        [
            *("wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"),
            *("-s", str(script), url, "--", *args),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": rps,
        "requests": requests,
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", output).group(1)),
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", output).group(1)),
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return round(float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


if __name__ == "__main__":
    main()
