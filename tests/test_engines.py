"""The model slot: one job at a time, in submission order, and a stop that frees a waiting job;
the manager's own thread, which runs every job's model work."""

import contextvars
import os
import signal
import threading
import time

import pytest
import torch

from ace_step_ui.engines import EngineManager, GpuSlot
from ace_step_ui.errors import Cancelled


def test_jobs_get_the_slot_in_the_order_they_were_submitted():
    slot = GpuSlot()
    numbers = [slot.number() for _ in range(5)]
    order, threads = [], []
    with slot.hold(threading.Event()):  # busy while the others line up, out of order
        for number in reversed(numbers):
            def job(number=number):
                with slot.hold(threading.Event(), number=number):
                    order.append(number)
            threads.append(threading.Thread(target=job))
            threads[-1].start()
        while slot.waiting() < len(numbers):
            time.sleep(0.01)
    for thread in threads:
        thread.join(10)
    assert order == numbers


def test_a_waiting_job_reports_its_place_and_leaves_when_stopped():
    slot, stop, places = GpuSlot(), threading.Event(), []
    outcome = {}

    def waiting():
        try:
            with slot.hold(stop, on_wait=places.append):
                outcome["ran"] = True
        except Cancelled as error:
            outcome["error"] = str(error)

    with slot.hold(threading.Event()):
        thread = threading.Thread(target=waiting)
        thread.start()
        while not places:
            time.sleep(0.01)
        stop.set()
        thread.join(5)
    assert places[0] == 1 and outcome == {"error": "stopped by the user before it started"}
    assert slot.waiting() == 0 and not slot.busy


def test_cancel_stops_every_job_of_one_owner_only():
    manager = EngineManager(device="cpu")
    with manager.job("a") as first, manager.job("a") as second, manager.job("b") as other:
        assert manager.cancel("a")
        assert first.is_set() and second.is_set() and not other.is_set()
    assert not manager.cancel("a")


def test_the_step_callback_reports_then_stops():
    stop, reported = threading.Event(), []
    on_step = EngineManager.step_callback(lambda step, total: reported.append(step), stop)
    on_step(1, 3)
    stop.set()
    with pytest.raises(Cancelled, match="after step 2 of 3"):
        on_step(2, 3)
    assert reported == [1, 2]


def test_an_own_thread_manager_runs_the_work_of_every_caller_on_one_thread():
    manager, seen = EngineManager(device="cpu", own_thread=True), []

    def caller() -> None:
        seen.append((threading.get_ident(), manager.run(threading.get_ident)))

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for thread in callers:
        thread.start()
        thread.join(10)
    caller()
    workers = {worker for _, worker in seen}
    assert len(seen) == 4 and len(workers) == 1 and not workers & {mine for mine, _ in seen}
    # Its errors reach the caller; work inside its work runs at once (no deadlock).
    with pytest.raises(Cancelled, match="stopped"):
        manager.run(lambda: (_ for _ in ()).throw(Cancelled("stopped")))
    assert manager.run(lambda: manager.run(threading.get_ident)) == workers.pop()
    assert EngineManager(device="cpu").run(threading.get_ident) == threading.get_ident()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_gets_a_thread_of_its_own():
    """ZeroGPU runs jobs in forked workers, which have none of the parent's threads."""
    manager = EngineManager(device="cpu", own_thread=True)
    parent_worker = manager.run(threading.get_ident)
    child = os.fork()
    if child == 0:  # the child: exit 0 when its work ran on a live thread, else 1 (or hang: alarm)
        signal.alarm(20)
        try:
            os._exit(0 if manager.run(lambda: threading.current_thread().is_alive()) else 1)
        finally:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert manager.run(threading.get_ident) == parent_worker


@pytest.mark.skipif(torch.get_num_threads() < 2 or not os.path.isdir("/proc/self/task"),
                    reason="needs 2+ torch threads and Linux's /proc")
@pytest.mark.parametrize("own_thread", [True, False])
def test_jobs_from_many_threads_leave_one_team_of_torch_threads(own_thread):
    """What `ComputeThread` is for: each thread that runs torch CPU ops keeps a team of OpenMP
    threads while it lives. Callers that stay alive (Gradio's workers, the REST worker) would
    each keep one; with the manager's own thread only its team exists."""
    manager, done, threads = EngineManager(device="cpu", own_thread=own_thread), threading.Event(), []

    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    def caller() -> None:
        manager.run(lambda: torch.ones(2_000_000).exp_())  # big enough to run on the team
        done.wait(30)

    manager.run(lambda: torch.ones(2_000_000).exp_())  # the manager's team, if it has one
    before = os_threads()
    try:
        for _ in range(3):
            threads.append(threading.Thread(target=caller))
            threads[-1].start()
            threads[-1].join(0.5)
        time.sleep(0.2)
        teams = os_threads() - before - len(threads)  # the callers' own threads aside
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
    workers = torch.get_num_threads() - 1  # a team's threads beside its caller
    assert teams == (0 if own_thread else len(threads) * workers)


def test_the_work_sees_the_callers_context_variables():
    """Gradio finds a job's progress bar through a context variable of the calling thread."""
    job = contextvars.ContextVar("job")
    job.set("mine")
    assert EngineManager(device="cpu", own_thread=True).run(job.get) == "mine"
