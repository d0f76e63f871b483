"""CPU accounting: how many cores each role kept busy during a measured window.

An img/s figure means little without who burned the CPU for it: the measured process (the bench
itself, or the server with its children), the load generator ("client"), and "other" (the rest
of the machine: noise from anything else running). ``cpu_sample`` is taken at both ends of a
window and ``cpu_cores`` turns the pair into cores busy per role.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuSample:
    at: float
    machine: float  # busy CPU seconds of the whole machine
    processes: dict[str, float]  # role -> CPU seconds of that role's processes

def cpu_sample(roles: Mapping[str, Sequence[int]]) -> CpuSample:
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    processes = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        processes[role] = total
    return CpuSample(time.monotonic(), busy, processes)

def cpu_cores(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Cores busy between two samples, per role, plus 'other' (everything else on the machine)."""
    wall = max(after.at - before.at, 1e-9)
    cores = {role: (after.processes[role] - before.processes[role]) / wall for role in after.processes}
    cores["other"] = max(0.0, (after.machine - before.machine) / wall - sum(cores.values()))
    return {role: round(value, 2) for role, value in cores.items()}

def process_tree(pid: int) -> list[int]:
    """The server and its children (a peer's API servers and model workers count as the server)."""
    with contextlib.suppress(psutil.Error):
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return [pid]
