"""One background-job runner for the long work a tab starts (tuning, training a series model,
training a cell): one job per kind at a time, progress on every page, Stop keeps what was trained.

A *job* is a method's training generator, called as ``job(stop)``: it yields
:class:`~studio.core.sampling.Progress` records, polls ``stop()`` between steps and, stopped or
not, ends by yielding its result (what was trained so far). :class:`JobRunner` drives it in a
daemon thread and keeps a :class:`JobState` that pages poll (a ``gr.Timer``): the owner's tab
shows the details, every page shows :func:`banner_text` (who runs what, how far). Only the
session that started a job can stop it; the others see it named as another session's run.

Runners belong to a manager (one app, one manager, one set of runners): :func:`runner`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr

from studio.core.sampling import Progress
from studio.errors import UserError

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
HISTORY_LIMIT = 5000  # progress records kept for the loss curves


@dataclass
class JobState:
    kind: str
    title: str
    status: str = "idle"  # idle | running | done | stopped | failed
    owner: str = ""
    step: int = 0
    total: int = 0
    started: float = 0.0
    seconds: float = 0.0
    message: str = ""
    params: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # {"step": k, **progress.info} per record with numbers
    first: Progress | None = None    # the first progress record with a preview (a "before" picture)
    pictured: Progress | None = None  # the latest progress record with a preview
    last: Progress | None = None      # the latest progress record
    result: Any = None             # what the job yielded last (its result)
    note: str = ""                 # what on_result said (e.g. under which key the model was registered)
    version: int = 0               # bumped on every change, so pages redraw only when something moved

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def finished(self) -> bool:
        return self.status in ("done", "stopped")


def owner_name(owner: str, me: str) -> str:
    """How a page names a job's owner: "your run" to the owner, "session ab12's run" to the others."""
    return "your run" if owner == me else f"session {owner[:4] or '?'}'s run"


class JobRunner:
    """The one job of one kind (e.g. ``"tune"``) an app runs at a time."""

    def __init__(self, kind: str, title: str):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.state = JobState(kind, title)

    def snapshot(self) -> JobState:
        with self._lock:
            return copy.copy(self.state)

    def _update(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self.state, k, v)
            self.state.seconds = time.time() - self.state.started if self.state.started else 0.0
            self.state.version += 1

    def start(self, owner: str, job: Callable[[Callable[[], bool]], Iterator], *, total: int = 0,
              params: dict | None = None, on_result: Callable[[Any], str] | None = None,
              message: str = "starting...") -> None:
        """Run ``job(stop)`` in a background thread; UserError if a job of this kind is running.
        ``on_result(result) -> note`` runs in that thread once the job has yielded its result
        (stopped or not), e.g. to register the trained model with the manager."""
        with self._lock:
            s = self.state
            if s.running:
                raise UserError(f"busy: {s.title} is already running ({owner_name(s.owner, owner)}, step "
                                f"{s.step} / {s.total}); its progress shows here, try again when it finishes")
            self._stop.clear()
            self.state = JobState(s.kind, s.title, status="running", owner=owner, total=total,
                                  started=time.time(), params=dict(params or {}), message=message,
                                  version=s.version + 1)
        threading.Thread(target=self._run, args=(job, on_result), daemon=True, name=f"job-{s.kind}").start()

    def stop(self, owner: str) -> str:
        s = self.snapshot()
        if not s.running:
            return "nothing is running"
        if s.owner != owner:
            raise UserError("this run belongs to another session; only the session that started it can stop it")
        self._stop.set()
        return "stopping after this step; what was trained so far is kept"

    def _run(self, job: Callable, on_result: Callable | None) -> None:
        result = None
        try:
            for item in job(self._stop.is_set):
                if isinstance(item, Progress):
                    self._progress(item)
                else:
                    result = item
            if result is None:
                raise RuntimeError("the job ended without a result")
            note = on_result(result) if on_result is not None else ""
            stopped = self._stop.is_set()
            self._update(status="stopped" if stopped else "done", result=result, note=note or "",
                         message=f"{'stopped' if stopped else 'finished'} after {self.state.step} steps")
        except Exception as exc:  # the page shows it; the server keeps serving
            if not isinstance(exc, UserError):
                log.exception("%s job failed", self.state.kind)
            self._update(status="failed", result=result,
                         message=str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")

    def _progress(self, item: Progress) -> None:
        changes: dict[str, Any] = {"step": item.step, "last": item, "message": ""}
        if item.total:
            changes["total"] = item.total
        numbers = {k: v for k, v in (item.info or {}).items() if isinstance(v, (int, float))}
        if numbers:
            changes["history"] = (self.state.history + [{"step": item.step, **numbers}])[-HISTORY_LIMIT:]
        if item.preview is not None:
            changes["pictured"] = item
            if self.state.first is None:
                changes["first"] = item
        self._update(**changes)


_RUNNERS: "weakref.WeakKeyDictionary[Any, dict[str, JobRunner]]" = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def runner(manager, kind: str, title: str | None = None) -> JobRunner:
    """The runner of jobs of ``kind`` for the app on ``manager`` (made on first call)."""
    with _RUNNERS_LOCK:
        runners = _RUNNERS.setdefault(manager, {})
        if kind not in runners:
            runners[kind] = JobRunner(kind, title or kind)
        return runners[kind]


def describe(s: JobState, me: str) -> str:
    """One line of markdown about job state ``s`` for session ``me``."""
    who = owner_name(s.owner, me)
    if s.status == "idle":
        return ""
    if s.running:
        loss = s.history[-1] if s.history else {}
        extra = "; ".join(f"{k} {v:.4g}" for k, v in loss.items() if k != "step")
        return (f"**{s.title}** ({who}): running, step {s.step} / {s.total}, {s.seconds:.0f} s"
                + (f"; {extra}" if extra else "") + (f". {s.message}" if s.message else ""))
    if s.status == "failed":
        return f"**{s.title}** ({who}) failed: {s.message}"
    return f"**{s.title}** ({who}) {s.message} in {s.seconds:.0f} s" + (f"; {s.note}" if s.note else "")


def banner_text(manager, me: str) -> str:
    """What every page shows about the manager's jobs: the running ones (and who runs them)."""
    with _RUNNERS_LOCK:
        runners = list(_RUNNERS.get(manager, {}).values())
    lines = [describe(s, me) for s in (r.snapshot() for r in runners) if s.running]
    return "Running: " + " · ".join(lines) if lines else ""


def build_job_banner(manager) -> gr.Markdown:
    """A line under the header, on every page, naming the jobs running now (polled)."""
    banner = gr.Markdown("", elem_id="job-banner")
    timer = gr.Timer(POLL_SECONDS * 2)

    def poll(request: gr.Request):
        return banner_text(manager, request.session_hash or "")

    timer.tick(poll, outputs=[banner], api_visibility="private", concurrency_limit=None, show_progress="hidden",
               queue=False)
    return banner


def job_status(s: JobState, me: str) -> dict:
    """The state as plain data for the API: what a script polls until ``finished``."""
    return {"kind": s.kind, "status": s.status, "yours": s.owner == me, "step": s.step, "total": s.total,
            "seconds": round(s.seconds, 1), "message": s.message, "note": s.note, "text": describe(s, me),
            "last": s.history[-1] if s.history else {}}


def job_api(job: JobRunner, api_name: str) -> None:
    """An API endpoint ``api_name`` answering :func:`job_status` for the caller's session (inside Blocks)."""
    def status(request: gr.Request) -> dict:
        return job_status(job.snapshot(), request.session_hash or "")

    status.__doc__ = f"The state of the {job.state.title} job: status, step / total, whose run, message."
    gr.api(status, api_name=api_name, queue=False)


def session(request: gr.Request | None) -> str:
    """The caller's session id (the owner of the jobs it starts)."""
    return (request.session_hash if request is not None else "") or ""
