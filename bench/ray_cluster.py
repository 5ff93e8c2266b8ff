"""`pliable bench --address` on a real two-node Ray cluster, with a node killed mid-grid.

    .venv/bin/python bench/ray_cluster.py    # ~2 min on 2 cores; exit status 1 if a claim fails

Starts a head and a second node on this machine (`ray start`, loopback, one CPU each, so that
the grid's runs spread over both), runs a four-run bench on it with `--out` on a directory both
see, SIGKILLs the second node (its raylet and every process below it) while a run of its own is
training, and shows:

1. the runs finished before the kill are kept (status finished, untouched);
2. the runs the dead node held, and only those, are recorded as failed (status.json, summary),
   the others finishing on the head; the exit status is 1;
3. the next invocation skips the finished runs and re-runs exactly the failed ones, after moving
   their directories aside to `<dir>.failed-1`; its exit status is 0.

Every process of the cluster is ended by its pid at the end (whatever happened): the ones whose
command line names this script's Ray temp directory, and every process below them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SEEDS = [1, 2]
CELLS = [f"{s}/tiny/s{seed}" for s in ("none", "reference_fresh") for seed in SEEDS]
# a dead node is declared dead after period x threshold (Ray's defaults: 3 s x 5)
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str = "") -> None:
    print(text, flush=True)


def ray(*args: str, env: dict) -> None:
    say("$ ray " + " ".join(args))
    done = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ray {args[0]} failed:\n{done.stdout}\n{done.stderr}")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(pid)
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def open_run_dirs(pids: set[int], root: Path) -> set[str]:
    """The cells whose stdout.log one of `pids` holds open: the runs they are training."""
    cells = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.endswith("/stdout.log") and target.startswith(f"{root}/"):
                cells.add(str(Path(target).parent.relative_to(root)))
    return cells


def statuses(root: Path) -> dict[str, str]:
    found = {}
    for cell in CELLS:
        path = root / cell / "status.json"
        found[cell] = json.loads(path.read_text())["status"] if path.exists() else "-"
    return found


def kill(pids: set[int], sig: int) -> None:
    for pid in sorted(pids):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="rc_", dir="/tmp"))  # short: Ray's socket paths
    temp, out = work / "ray", work / "out"
    port, second_port = free_port(), free_port()
    # token authentication on every node and the driver (the token: ~/.ray/auth_token, made by
    # `ray get-auth-token --generate` or the first local instance); left unset, `ray start
    # --head` turns it on when a token exists but a joining node does not
    env = {**os.environ, **FAST_HEALTH, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    bench_yaml = work / "cluster.yaml"
    bench_yaml.write_text(f"base: tiny.yaml\nname: cluster\nseeds: {SEEDS}\n"
                          "strategies: [{name: none}]\ncpus_per_run: 1\n"
                          "overrides: [sequence.switch_every=2048]\n")
    root = out / "cluster"
    command = [str(BIN / "pliable"), "bench", str(bench_yaml), "--address",
               f"127.0.0.1:{port}", "--out", str(out)]
    failures = []

    def claim(ok: bool, text: str) -> None:
        say(f"  [{'ok' if ok else 'FAILED'}] {text}")
        if not ok:
            failures.append(text)

    try:
        say(f"work directory {work}")
        ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
            "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", env=env)
        ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
            "--num-cpus=1", "--num-gpus=0", f"--node-manager-port={second_port}", env=env)
        raylets = [pid for pid in all_pids() if "raylet" in cmdline(pid).split(" ")[0]
                   and f"--node_manager_port={second_port}" in cmdline(pid)]
        if len(raylets) != 1:
            raise RuntimeError(f"the second node's raylet not found: {raylets}")
        raylet = raylets[0]
        say(f"second node: raylet pid {raylet} (node manager port {second_port})")

        say(f"\n$ {' '.join(command)}")
        log = (work / "first.log").open("w")
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        victims: set[str] = set()
        before: dict[str, str] = {}
        deadline = time.monotonic() + 240
        while not victims and first.poll() is None and time.monotonic() < deadline:
            # once a run has finished (on either node), kill the second node while it trains
            finished = [c for c, s in statuses(root).items() if s == "finished"]
            if finished and open_run_dirs(descendants({raylet}), root):
                time.sleep(1)  # well into training
                node = descendants({raylet})
                held = open_run_dirs(node, root)
                before = statuses(root)
                if held:  # (its run may have ended in that second)
                    kill(node, signal.SIGKILL)
                    victims = held
                    say(f"killed the second node (pids {sorted(node)}) while it trained "
                        f"{sorted(victims)}; finished then: "
                        f"{sorted(c for c, s in before.items() if s == 'finished')}")
            time.sleep(0.2)
        code = first.wait(timeout=max(1, deadline - time.monotonic()))
        log.close()
        say((work / "first.log").read_text().strip())
        after = statuses(root)
        say(f"exit status {code}; statuses: {after}")

        say("\nclaims of the first invocation:")
        claim(bool(victims), "the second node was training a run of the grid when killed")
        claim(any(s == "finished" for s in before.values()), "a run had finished before")
        claim(code == 1, "exit status 1 (a run failed)")
        claim(all(after[c] == "finished" for c, s in before.items() if s == "finished"),
              "the runs finished before the kill are kept")
        failed = {c for c, s in after.items() if s == "failed"}
        claim(failed == victims, f"failed runs {sorted(failed)} == the dead node's "
              f"{sorted(victims)}")
        claim(all(after[c] == "finished" for c in CELLS if c not in victims),
              "every other run finished (on the head)")
        for cell in failed:
            error = json.loads((root / cell / "status.json").read_text()).get("error", "")
            last = error.strip().splitlines()[-1] if error.strip() else ""
            claim(bool(last), f"{cell}: status.json records why: {last[:160]}")

        say(f"\n$ {' '.join(command)}")
        second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env,
                                timeout=240)
        say((second.stdout + second.stderr).strip())
        lines = second.stdout.splitlines()
        say("\nclaims of the second invocation:")
        claim(second.returncode == 0, f"exit status {second.returncode} == 0")
        skipped = {ln.split()[1] for ln in lines if ln.startswith("skipped ")}
        ran = {ln.split()[1] for ln in lines if ln.startswith("finished ")}
        claim(skipped == set(CELLS) - victims, f"skipped exactly the finished runs "
              f"{sorted(skipped)}")
        claim(ran == victims, f"re-ran exactly the dead node's runs {sorted(ran)}")
        claim(all((root / f"{c}.failed-1" / "status.json").exists() for c in victims),
              "their first attempts were moved aside to <dir>.failed-1")
        claim(set(statuses(root).values()) == {"finished"}, "every run is now finished")
    except Exception as exc:  # noqa: BLE001 - said, and the exit status
        failures.append(f"{type(exc).__name__}: {exc}")
        say(f"error: {type(exc).__name__}: {exc}")
    finally:
        ours = {pid for pid in all_pids() if str(temp) in cmdline(pid)}
        cluster = descendants(ours) - {os.getpid()}
        kill(cluster, signal.SIGTERM)
        time.sleep(2)
        kill({pid for pid in cluster if Path(f"/proc/{pid}").exists()}, signal.SIGKILL)
        say(f"\nstopped the cluster's {len(cluster)} processes by pid")
        shutil.rmtree(work, ignore_errors=True)
    say(f"\n{len(failures)} claim(s) failed" if failures else "\nall claims hold")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
