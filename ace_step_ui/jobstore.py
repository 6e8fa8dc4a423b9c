"""The REST jobs, kept in SQLite (the standard library's `sqlite3`) so none is lost across a restart.

A job is `queued` until its sources are fetched (`ready`) and the worker claims it, then `running`,
then `completed`, `failed` or `cancelled`. After a restart, queued jobs run; a running one was cut
off and goes back to the queue once (a second cut ends it as failed, with the reason); finished
ones stay until their retention time.

The worker takes jobs fairly: round robin over the callers (API keys), each caller's jobs in the
order sent, so one caller's fifty jobs do not hold back another's one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)
MAX_ATTEMPTS = 2  # a job cut off by a restart runs once more; cut off again, it fails

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    service TEXT NOT NULL,
    model_id TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    payload TEXT NOT NULL,
    sent TEXT NOT NULL,
    format TEXT NOT NULL,
    ready INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    error_kind TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


@dataclass
class Job:
    id: str
    seq: int
    owner: str
    service: str
    model_id: str
    task: str
    model: str
    payload: dict[str, Any]  # what runs: sources as local files once fetched
    sent: dict[str, Any]  # what the caller sent (a data: URI shortened), for the result's params
    format: str
    ready: bool
    state: str
    error: str = ""
    error_kind: str = ""  # input, unavailable, internal, cancelled, restart
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = field(default=None)  # {"file", "seed", "params"}

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobStore:
    """The job table: one connection, used under a lock by the server's threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # a killed process leaves it consistent
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def new_id() -> str:
        """A request id: random, so that knowing one tells nothing of the others."""
        return str(uuid.uuid4())

    def add(self, owner: str, service: str, model_id: str, task: str, model: str,
            payload: dict[str, Any], sent: dict[str, Any], fmt: str, ready: bool,
            job_id: str = "") -> Job:
        job_id = job_id or self.new_id()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, owner, service, model_id, task, model, payload, sent, format,"
                " ready, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, owner, service, model_id, task, model, json.dumps(payload),
                 json.dumps(sent), fmt, int(ready), QUEUED, time.time()))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, states: Iterable[str] = ()) -> list[Job]:
        """Jobs in `states` (all when empty), in the order they were sent."""
        states = tuple(states)
        with self._lock:
            if states:
                marks = ", ".join("?" * len(states))
                rows = self._db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq",
                                        states).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        return [_job(row) for row in rows]

    def active(self, owner: str) -> int:
        """How many of `owner`'s jobs wait or run."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN (?, ?)",
                (owner, QUEUED, RUNNING)).fetchone()
        return count

    def fetched(self, job_id: str, payload: dict[str, Any]) -> None:
        """The job's sources are local files now: it may run."""
        with self._lock:
            self._db.execute("UPDATE jobs SET payload = ?, ready = 1 WHERE id = ? AND state = ?",
                             (json.dumps(payload), job_id, QUEUED))

    def claim_next(self) -> Job | None:
        """The next job to run, now `running`: the first in `run_order` whose sources are fetched
        and that is its owner's first in line (so an owner's jobs start in the order sent)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq",
                                    (QUEUED,)).fetchall()
            order = run_order([_job(row) for row in rows], self._last_starts())
            heads = {job.owner: job for job in reversed(order)}  # each owner's first in line
            job = next((job for job in order if heads[job.owner] is job and job.ready), None)
            if job is None:  # an owner whose next job still fetches its source waits for it
                return None
            self._db.execute("UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1 "
                             "WHERE id = ?", (RUNNING, time.time(), job.id))
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return _job(row)

    def position(self, job: Job) -> int:
        """How many queued jobs run before `job` (0: it is next)."""
        order = self.queue_order()
        ids = [other.id for other in order]
        return ids.index(job.id) if job.id in ids else 0

    def queue_order(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq",
                                    (QUEUED,)).fetchall()
            starts = self._last_starts()
        return run_order([_job(row) for row in rows], starts)

    def finish(self, job_id: str, state: str, result: dict[str, Any] | None = None,
               error: str = "", error_kind: str = "") -> bool:
        """End a job that has not ended yet; False when it had (a cancel came first)."""
        assert state in FINISHED
        with self._lock:
            changed = self._db.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, error_kind = ?, finished_at = ? "
                "WHERE id = ? AND state IN (?, ?)",
                (state, json.dumps(result) if result is not None else None, error, error_kind,
                 time.time(), job_id, QUEUED, RUNNING)).rowcount
        return bool(changed)

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False when it runs or has ended."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE jobs SET state = ?, error = ?, error_kind = ?, finished_at = ? "
                "WHERE id = ? AND state = ?",
                (CANCELLED, "cancelled before it started", "cancelled", time.time(), job_id,
                 QUEUED)).rowcount
        return bool(changed)

    def recover(self) -> tuple[list[str], list[str]]:
        """After a restart: the jobs the last process was running go back to the queue, or fail
        when they had been cut off before. Returns (re-queued ids, failed ids)."""
        requeued, failed = [], []
        with self._lock:
            rows = self._db.execute("SELECT id, attempts FROM jobs WHERE state = ?",
                                    (RUNNING,)).fetchall()
            for row in rows:
                if row["attempts"] < MAX_ATTEMPTS:
                    self._db.execute("UPDATE jobs SET state = ?, started_at = NULL WHERE id = ?",
                                     (QUEUED, row["id"]))
                    requeued.append(row["id"])
                else:
                    self._db.execute(
                        "UPDATE jobs SET state = ?, error = ?, error_kind = ?, finished_at = ? "
                        "WHERE id = ?",
                        (FAILED, f"the server stopped while this job ran, {row['attempts']} times; "
                                 f"it was not run again", "restart", time.time(), row["id"]))
                    failed.append(row["id"])
        return requeued, failed

    def expired(self, finished_before: float) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?, ?) AND finished_at < ?",
                (*FINISHED, finished_before)).fetchall()
        return [_job(row) for row in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def _last_starts(self) -> dict[str, float]:
        rows = self._db.execute("SELECT owner, MAX(started_at) FROM jobs "
                                "WHERE started_at IS NOT NULL GROUP BY owner").fetchall()
        return {owner: started for owner, started in rows}


def run_order(queued: list[Job], last_starts: dict[str, float]) -> list[Job]:
    """The order `queued` jobs (in the order sent) will run in: round robin over their owners, the
    one served longest ago (or never) first; each owner's jobs in the order sent."""
    lines: dict[str, list[Job]] = {}
    for job in queued:
        lines.setdefault(job.owner, []).append(job)
    turn = {owner: (last_starts.get(owner, float("-inf")), line[0].seq)
            for owner, line in lines.items()}
    order: list[Job] = []
    clock = 0
    while lines:
        owner = min(lines, key=lambda name: turn[name])
        order.append(lines[owner].pop(0))
        clock += 1
        turn[owner] = (float("inf"), clock)  # served: behind every owner not served in this pass
        if not lines[owner]:
            del lines[owner]
    return order


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], seq=row["seq"], owner=row["owner"], service=row["service"],
               model_id=row["model_id"], task=row["task"], model=row["model"],
               payload=json.loads(row["payload"]), sent=json.loads(row["sent"]),
               format=row["format"], ready=bool(row["ready"]), state=row["state"],
               error=row["error"], error_kind=row["error_kind"], attempts=row["attempts"],
               created_at=row["created_at"], started_at=row["started_at"],
               finished_at=row["finished_at"],
               result=json.loads(row["result"]) if row["result"] else None)
