"""bench_cpu.CpuMeter: what `bench ingest` reports as CPU by thread job and for the emulator.
Accounting, not speed: each thread's CPU lands under its job and nowhere else."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tidegate.bench_cpu import CpuMeter, job_of


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_thread_names_map_to_the_jobs_of_the_local_ingest() -> None:
    assert job_of("MainThread") == "batch"
    assert job_of("pull-shop-orders-tidegate-2") == "pullers"
    assert job_of("commit_3") == "commits"
    assert job_of("tidegate-bookkeeper") == "bookkeeper"
    assert job_of("project_0") == job_of("tidegate-projector") == "projector"
    assert job_of("Thread-7 (run)") == "other"


def test_cpu_lands_under_the_thread_that_spent_it_and_the_other_process() -> None:
    # CPU a thread spent before the block is not counted
    spun = threading.Event()

    def early() -> None:
        _spin(0.3)
        spun.set()
        time.sleep(1.0)

    before = threading.Thread(target=early, name="pull-early-0")
    before.start()
    assert spun.wait(30)
    spin_then_wait = "import time\ne=time.process_time()+0.4\nwhile time.process_time()<e: pass\nprint('spun', flush=True)\ntime.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", spin_then_wait], stdout=subprocess.PIPE, text=True)
    try:
        with CpuMeter(other_pid=other.pid, every=0.05) as cpu:
            worker = threading.Thread(target=_spin, args=(0.4,), name="commit_0")
            worker.start()
            worker.join()  # ended before the meter's last sample: its CPU still counts
            before.join()
            assert other.stdout is not None
            assert other.stdout.readline().strip() == "spun"
    finally:
        other.kill()
        other.wait()
    figures = cpu.figures(messages=1000)
    assert figures["cpu_thread_commits_s"] >= 0.3
    assert figures.get("cpu_thread_pullers_s", 0.0) < 0.1
    assert figures.get("cpu_thread_batch_s", 0.0) < 0.2
    assert figures["cpu_emulator_s"] >= 0.3
    assert figures["cpu_process_s"] >= figures["cpu_thread_commits_s"]
    assert figures["cpu_native_threads_s"] >= 0.0
    assert abs(figures["cpu_process_us_per_msg"] - figures["cpu_process_s"] * 1000) <= 10


def test_no_block_no_figures() -> None:
    assert CpuMeter().figures() == {}
