"""Farm: many servers, a thread each, driven through a ServerLink per server.

A farm runs a stream of jobs over several ComfyUI servers (several GPUs, or several
processes on one GPU) and keeps each one busy::

    from comfy_orchestrator.farm import Farm, JobFailed
    from comfy_orchestrator.servers import load_farm

    farm = Farm(load_farm("farm.toml"))            # or Farm(["http://a:8188", "http://b:8188"])
    for outcome in farm.run(jobs, out_dir=Path("out"), on_event=print):
        if isinstance(outcome, JobFailed):
            print(outcome.job.label, "failed on", outcome.servers, outcome.error)
        else:                                        # a JobResult
            print(outcome.job.label, "ran on", outcome.server, outcome.files)

`run` reads `jobs` lazily (a bounded window ahead of the servers) and yields one outcome
per job, in completion order, never two: a `JobResult` (`.server` names the server that
ran it: its `ServerConfig.name`, host:port unless the farm file names it) or a `JobFailed`
with the error, the number of attempts and the servers tried.
Progress arrives as `FarmEvent` values (ServerUp, ServerDown, JobSubmitted, JobRetrying,
JobDone, DuplicateDiscarded) through `on_event`, called from the farm's threads; keep it
quick. `Farm.status()` reads each server's health for `comfy-orch farm status`.

How jobs move (the policy is pure and lives in dispatch.py):
- Each server holds `1 + queue_ahead` jobs (default 2 ahead), so its GPU never waits.
- A free slot takes the waiting job that this server will finish soonest, judged from
  each server's observed job times, queue and loaded checkpoint (`SoonestFinish`);
  among those it prefers jobs sharing the checkpoint, input image and prompt text of
  its last job (affinity), and it only takes jobs whose checkpoint and node classes
  its object_info lists.
- A server with nothing to take moves a job queued behind another server's running
  one to itself when it would finish it sooner (the end of a sweep, a slow server).
- A busy server that has not answered a request of ours for `health_interval_s` is asked
  /system_stats. One that fails that or a job (connection, 5xx, timeout) is marked down;
  its jobs go back to the waiting list (the ones queued behind its running job are taken
  off it); it is probed with `RetryPolicy.delay()` backoff and rejoins when it answers.
  A job that fails the same deterministic way on two servers (PromptRejected,
  ExecutionFailed, OutOfMemory), that runs out of `RetryPolicy.max_attempts`, or that no
  server can run, is reported as `JobFailed`. If a moved job finishes twice, the first
  result is kept and the second discarded (`DuplicateDiscarded`).

The engine that moves them is engine.py's (its threads) over run_state.py's books (its
decisions); the events and the links are links.py's, and every name this module had is
still importable from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path

from comfy_orchestrator.dispatch import Dispatch, SoonestFinish, is_refusal
from comfy_orchestrator.engine import FarmRun
from comfy_orchestrator.errors import ComfyError
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import FARM_TIMEOUTS, Timeouts
from comfy_orchestrator.links import (
    ClientLink,
    Device,
    DuplicateDiscarded,
    FarmEvent,
    JobDone,
    JobFailed,
    JobOutcome,
    JobProgress,
    JobRetrying,
    JobSubmitted,
    JobSubmitting,
    NoServerUp,
    RunningJob,
    ServerDown,
    ServerLink,
    ServerStatus,
    ServerUp,
)
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.servers import ServerConfig, checked_servers
from comfy_orchestrator.transport import SharedAnswers

__all__ = [
    "ClientLink", "Device", "DuplicateDiscarded", "Farm", "FarmEvent", "JobDone", "JobFailed", "JobOutcome",
    "JobProgress", "JobRetrying", "JobSubmitted", "JobSubmitting", "NoServerUp", "RunningJob", "ServerDown",
    "ServerLink", "ServerStatus", "ServerUp",
]


class Farm:
    """Runs jobs over several ComfyUI servers, one thread each; see the module docstring."""

    def __init__(
        self,
        servers: Sequence[ServerConfig | str],
        *,
        policy: RetryPolicy = RetryPolicy(),
        dispatch: Dispatch = SoonestFinish(),
        connect: Callable[[ServerConfig], ServerLink] | None = None,
        timeouts: Timeouts = FARM_TIMEOUTS,
        health_interval_s: float = 1.0,
        window: int = 64,
        straggler_factor: float | None = 2.0,
    ) -> None:
        configs = [s if isinstance(s, ServerConfig) else ServerConfig(url=s) for s in servers]
        self.servers = checked_servers([c.model_dump() for c in configs], source="farm")
        self.policy = policy
        self.dispatch = dispatch
        self.timeouts = timeouts
        self.health_interval_s = health_interval_s  # how often a busy server is asked whether it answers
        self.window = window
        # an idle server copies a running job once nothing waits, if it would finish it this many times
        # sooner than the server running it (None: never); the first result is kept, the other cancelled
        self.straggler_factor = straggler_factor
        shared = SharedAnswers()  # the servers of one ComfyUI install: their /object_info parsed once
        self._connect = connect or (lambda config: ClientLink(config, timeouts=timeouts, shared=shared))

    def connect(self, config: ServerConfig) -> ServerLink:
        """A link to one of the farm's servers, as its threads use; the caller closes it."""
        return self._connect(config)

    def run(
        self,
        jobs: Iterable[Job],
        *,
        out_dir: Path | str | None = None,
        on_event: Callable[[FarmEvent], None] | None = None,
    ) -> Generator[JobOutcome, None, None]:
        """Run every job once over the farm; yield each one's JobResult or JobFailed as it settles.

        Outputs are downloaded into `out_dir` when given. Stopping the iteration early
        (break, close()) takes the jobs still queued off the servers.
        """
        folder = Path(out_dir) if out_dir is not None else None
        return FarmRun(self, iter(jobs), out_dir=folder, on_event=on_event).outcomes()

    def status(self, *, timeout_s: float | None = None) -> list[ServerStatus]:
        """Each server's health, queue, devices and checkpoints, read in parallel (within `Timeouts.status_s`)."""
        timeout_s = self.timeouts.status_s if timeout_s is None else timeout_s
        answers: dict[str, ServerStatus] = {}

        def read(config: ServerConfig) -> None:
            link = self._connect(config)
            try:
                answers[config.name] = link.status()
            except ComfyError as exc:
                answers[config.name] = ServerStatus(name=config.name, url=config.display_url, up=False, error=str(exc),
                                                    refused=is_refusal(exc), tags=config.tags)
            finally:
                link.close()

        threads = [threading.Thread(target=read, args=(config,), name=f"farm-status-{config.name}", daemon=True)
                   for config in self.servers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        return [answers.get(config.name) or ServerStatus(
            name=config.name, url=config.display_url, up=False, error=f"no answer within {timeout_s:g} s", tags=config.tags)
            for config in self.servers]
