"""A local bench opens no port to the network, and the local executor it runs on (a fresh process
per run, resources and GPUs handed out as Ray would).

Module-level imports stay light: the executor's runs unpickle this module's functions in fresh
processes.
"""

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from agents.errors import ConfigError
from analysis.study.executors import GpuPool, LocalExecutor

ROOT = Path(__file__).resolve().parent.parent
PLIABLE = Path(sys.executable).with_name("pliable")


def process_tree(root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # gone, or not ours
        pass
    return inodes


def hex_address(text: str) -> str:
    """/proc/net/tcp{,6}'s local address (32-bit words in host order) as an IP address."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN that one of `pids` holds."""
    owner = {inode: pid for pid in pids for inode in socket_inodes(pid)}
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in owner:  # TCP_LISTEN
                address, port = local.rsplit(":", 1)
                found.append((owner[inode], hex_address(address), int(port, 16)))
    return found


def off_loopback(sockets):
    return [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]


pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def test_the_sampler_sees_a_listener_on_every_interface():
    with socket.socket() as wide, socket.socket() as local:
        wide.bind(("0.0.0.0", 0))
        wide.listen()
        local.bind(("127.0.0.1", 0))
        local.listen()
        seen = listening(process_tree(os.getpid()))
        ports = {port: address for _, address, port in seen}
        assert ports[wide.getsockname()[1]] == "0.0.0.0"
        assert ports[local.getsockname()[1]] == "127.0.0.1"
        assert off_loopback(seen) == [(os.getpid(), "0.0.0.0", wide.getsockname()[1])]


def test_a_local_bench_listens_on_no_address_outside_loopback(tmp_path):
    if not PLIABLE.exists():
        pytest.skip("the pliable console script is not installed")
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", "seeds": [1],
                                    "strategies": [{"name": "none"}]}))
    bench = subprocess.Popen([str(PLIABLE), "bench", str(path), "--out", str(tmp_path / "out")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=ROOT)
    seen, most = [], [0]

    def sample():
        while bench.poll() is None:
            tree = process_tree(bench.pid)
            most[0] = max(most[0], len(tree))
            seen.extend(listening(tree))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        output, _ = bench.communicate(timeout=120)
    finally:
        bench.kill()
        sampler.join()
    assert bench.returncode == 0, output
    assert "bench pair: 2 runs: 2 finished" in output
    assert most[0] >= 2  # the runs' processes were sampled too
    assert off_loopback(seen) == [], f"listening outside loopback: {sorted(set(seen))}"


def timed_work(item):
    """A run of the local executor's tests (module level: it is pickled into a fresh process)."""
    import time

    start = time.monotonic()
    time.sleep(0.3)
    if item == "raise":
        raise ValueError("item broke")
    if item == "die":
        os._exit(3)
    return start, time.monotonic(), os.getpid(), os.environ.get("GOMP_SPINCOUNT"), \
        os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_executor_limits_runs_gives_each_a_process_and_hands_back_failures():
    executor = LocalExecutor(cpus=0.5, max_parallel=2, cpu_count=2)  # the CPUs would allow 4
    outcomes = dict(executor.map_unordered(timed_work, [0, 1, "raise", 2, "die", 3]))

    assert isinstance(outcomes["raise"], Exception)
    assert str(outcomes["raise"]).splitlines()[-1] == "ValueError: item broke"
    assert "exit code 3" in str(outcomes["die"])  # a process that died is a failure, no crash
    runs = [outcomes[i] for i in range(4)]
    for start, *_ in runs:  # at no start are more than two running, itself included
        assert sum(s <= start < e for s, e, *_ in runs) <= 2
    assert len({pid for *_, pid, _, _ in runs}) == 4 and os.getpid() not in {r[2] for r in runs}
    assert {spin for *_, spin, _ in runs} == {os.environ.get("GOMP_SPINCOUNT", "1000")}
    assert {gpus for *_, gpus in runs} == {os.environ.get("CUDA_VISIBLE_DEVICES")}
    assert not executor.running


def test_local_executor_checks_resources_in_one_line():
    with pytest.raises(ConfigError, match="a run needs 3 CPUs and 0 GPUs but this machine has 2 "
                       "and 0: lower cpus_per_run"):
        LocalExecutor(cpus=3, cpu_count=2)
    with pytest.raises(ConfigError, match="needs 1 CPUs and 2 GPUs but this machine has 4 and 1"):
        LocalExecutor(cpus=1, gpus=2, cpu_count=4, gpu_devices=["0"])
    with pytest.raises(ConfigError, match="whole number"):
        LocalExecutor(cpus=1, gpus=1.5, cpu_count=4, gpu_devices=["0", "1"])
    assert LocalExecutor(cpus=0.5, cpu_count=3).limit == 6
    assert LocalExecutor(cpus=2, cpu_count=3, max_parallel=4).limit == 1


def test_gpus_are_handed_out_per_run_and_back():
    pool = GpuPool(["0", "1"])
    halves = [pool.acquire(0.5) for _ in range(4)]  # two runs share each GPU
    assert halves == [["0"], ["0"], ["1"], ["1"]] and pool.acquire(0.5) is None
    pool.release(["0"], 0.5)
    assert pool.acquire(1) is None and pool.acquire(0.5) == ["0"]
    pool = GpuPool(["3", "5", "7"])
    assert pool.acquire(2) == ["3", "5"] and pool.acquire(2) is None
    assert pool.acquire(1) == ["7"] and pool.acquire(0) == []
    pool.release(["3", "5"], 2)
    assert pool.acquire(2) == ["3", "5"]


def gpu_work(item):
    import time

    time.sleep(0.2)
    return os.environ["CUDA_VISIBLE_DEVICES"]


def test_local_executor_gives_each_run_its_gpus_in_cuda_visible_devices():
    executor = LocalExecutor(cpus=0.5, gpus=1, cpu_count=2, gpu_devices=["2", "5"])
    seen = dict(executor.map_unordered(gpu_work, range(4)))
    assert sorted(seen.values()) == ["2", "2", "5", "5"]  # two at once, one GPU each
    executor = LocalExecutor(cpus=0.5, gpus=2, cpu_count=2, gpu_devices=["2", "5"])
    assert set(dict(executor.map_unordered(gpu_work, range(2))).values()) == {"2,5"}


def stoppable_work(marker):
    """Sleeps until SIGTERM, then notes the signal in `marker` (a graceful stop); "quick" returns
    once the other run has started."""
    import signal

    if marker.endswith("quick"):
        while not list(Path(marker).parent.glob("*.started")):
            time.sleep(0.05)
        return "quick"
    stopped = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    Path(marker).with_suffix(".started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(marker).write_text(f"pgid {os.getpgid(0)} signals {stopped}")
    return "stopped"


def test_closing_the_local_executor_stops_each_run_once_and_gracefully(tmp_path):
    """As an interrupted bench does: a run has ended, another is going, close() stops it."""
    executor = LocalExecutor(cpus=1, cpu_count=2)
    slow = tmp_path / "slow"
    outcomes = executor.map_unordered(stoppable_work, [str(slow), str(tmp_path / "quick")])
    assert next(outcomes)[1] == "quick"
    executor.close()

    pid = int(slow.with_suffix(".started").read_text())
    assert slow.read_text() == f"pgid {pid} signals [15]"  # one SIGTERM, in a group of its own
    assert not Path(f"/proc/{pid}").exists() or ") Z " in Path(f"/proc/{pid}/stat").read_text()
    assert not executor.running
    outcomes.close()
