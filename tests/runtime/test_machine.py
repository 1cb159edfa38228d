"""The torch-thread rule: usable cores minus the busy ones (1-minute load average), at least one."""

import pytest

from clim.runtime import machine


@pytest.mark.parametrize("cores, load, threads", [
    (2, 0.1, 2),    # quiet: every core
    (2, 1.0, 1),    # one CPU-bound job beside: the free core only
    (2, 0.6, 1),    # a job mostly busy counts as one
    (2, 10.2, 1),   # overloaded: still one
    (16, 3.4, 13),
    (4, 0.0, 4),
])
def test_threads_from_cores_and_load(cores, load, threads):
    chosen, line = machine.choose_torch_threads(cores, load)
    assert chosen == threads
    assert line.startswith(f"torch threads: {threads} of {cores} usable core(s), load average {load:.1f}")


def test_defaults_read_affinity_and_load_average(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (1.2, 0.5, 0.1))
    assert machine.usable_cores() == 3
    assert machine.choose_torch_threads()[0] == 2
