import sqlite3

from ace_step_ui.jobstore import (CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, JobStore,
                                  run_order)


def add(store, owner, ready=True, **payload):
    return store.add(owner, "runcomfy", "acestep-ai/ace-step/text-to-audio", "generate", "m",
                     {"tags": "x", **payload}, {"tags": "x"}, "wav", ready)


def test_jobs_run_round_robin_over_owners_each_in_the_order_sent(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    a = [add(store, "a") for _ in range(3)]
    b = [add(store, "b") for _ in range(2)]
    c = add(store, "c")
    assert [job.id for job in store.queue_order()] == [a[0].id, b[0].id, c.id, a[1].id, b[1].id,
                                                       a[2].id]
    assert store.position(c) == 2
    claimed = [store.claim_next().id for _ in range(6)]
    assert claimed == [job.id for job in (a[0], b[0], c, a[1], b[1], a[2])]
    assert store.claim_next() is None
    assert all(job.state == RUNNING and job.attempts == 1 for job in store.jobs())


def test_an_owner_served_lately_goes_after_one_not_served():
    class Job:
        def __init__(self, owner, seq):
            self.owner, self.seq = owner, seq

    queued = [Job("a", 5), Job("b", 6), Job("a", 7)]
    assert [job.seq for job in run_order(queued, {"a": 100.0})] == [6, 5, 7]
    assert [job.seq for job in run_order(queued, {"a": 100.0, "b": 200.0})] == [5, 6, 7]


def test_an_owner_waits_for_its_first_jobs_source_rather_than_skip_it(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    slow = add(store, "a", ready=False, audio="https://example.com/x.wav")
    later = add(store, "a")
    other = add(store, "b")
    assert store.claim_next().id == other.id  # a's next job is still downloading
    assert store.claim_next() is None  # and a's later one may not pass it
    store.fetched(slow.id, {"tags": "x", "audio": "/data/x.wav"})
    first = store.claim_next()
    assert first.id == slow.id and first.payload["audio"] == "/data/x.wav"
    assert store.claim_next().id == later.id


def test_a_restart_requeues_a_cut_off_job_once_then_fails_it(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = add(store, "a")
    waiting = add(store, "a")
    store.claim_next()
    store.close()
    store = JobStore(path)  # the next process
    assert store.recover() == ([job.id], [])
    assert store.get(job.id).state == QUEUED and store.get(waiting.id).state == QUEUED
    assert store.claim_next().id == job.id and store.get(job.id).attempts == 2
    store.close()
    store = JobStore(path)
    assert store.recover() == ([], [job.id])
    failed = store.get(job.id)
    assert failed.state == FAILED and failed.error_kind == "restart"
    assert "the server stopped while this job ran, 2 times" in failed.error
    assert store.claim_next().id == waiting.id


def test_cancel_reaches_only_jobs_not_started_and_an_end_is_final(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    running, queued = add(store, "a"), add(store, "a")
    store.claim_next()
    assert not store.cancel_queued(running.id)
    assert store.cancel_queued(queued.id) and store.get(queued.id).state == CANCELLED
    assert not store.finish(queued.id, COMPLETED, result={"file": "x.wav"})  # cancelled first
    assert store.finish(running.id, COMPLETED, result={"file": "x.wav", "seed": 1, "params": {}})
    assert store.get(running.id).result == {"file": "x.wav", "seed": 1, "params": {}}
    assert store.active("a") == 0


def test_finished_jobs_expire_and_the_file_is_a_real_sqlite_database(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = add(store, "a")
    store.cancel_queued(job.id)
    finished = store.get(job.id).finished_at
    assert store.expired(finished - 1) == []
    assert [old.id for old in store.expired(finished + 1)] == [job.id]
    store.delete(job.id)
    assert store.get(job.id) is None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
