"""The model slot: one job at a time, in submission order, and a stop that frees a waiting job."""

import threading
import time

import pytest

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
