"""Host pauses: stretches in which the hypervisor runs none of this VM's vCPUs.

On a shared machine they come ~100 ms at a time when both vCPUs are busy, and guest tools do not
show them (no steal time, no cgroup quota). Every request in flight waits them out, so a load
run that caught one reports the host's tail, not the service's. A thread pinned to each CPU,
at real-time priority where allowed (nothing in the guest can then hold it back), sleeps 5 ms
at a time; a wake-up more than 50 ms late is a pause.
"""
from __future__ import annotations

import os
import threading
import time

LATE = 0.05  # seconds late that only a paused vCPU explains


class PauseWatch:
    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []  # (time.monotonic() at the end, length)
        self.realtime = True
        for cpu in sorted(os.sched_getaffinity(0)):
            threading.Thread(target=self._watch, args=(cpu,), daemon=True).start()

    def _watch(self, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # 0 is this thread on Linux
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError:  # not root: ordinary priority, and the report says so
            self.realtime = False
        last = time.monotonic()
        while True:
            time.sleep(0.005)
            now = time.monotonic()
            if now - last > LATE:
                self.ends.append((now, now - last))
            last = now

    def unheld(self, times: list[tuple[float, float]]) -> list[float]:
        """The milliseconds of each (start, end) request that no pause overlapped."""
        return [(end - start) * 1000 for start, end in times
                if not any(start < at and end > at - length for at, length in self.ends)]
