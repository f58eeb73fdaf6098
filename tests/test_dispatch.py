"""dispatch: the farm's pure policy: job needs, server choice, affinity, job times, retries, duplicates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from comfy_orchestrator.dispatch import (
    Attempt,
    Capability,
    CompletionLedger,
    JobNeeds,
    JobTimes,
    QueuedJob,
    RoundRobin,
    ServerView,
    SoonestFinish,
    WaitingJob,
    affinity,
    decide_retry,
    estimate_finish_s,
    job_needs,
    worth_duplicating,
)
from comfy_orchestrator.errors import (
    ConnectionFailed,
    ExecutionFailed,
    JobLost,
    JobTimedOut,
    MissingModel,
    OutOfMemory,
    PromptRejected,
)
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import load_farm
from tests.conftest import img2img_prompt

CKPT = "random-sd15.safetensors"


def img2img_job(*, ckpt: str = CKPT, image: str = "in.png", text: str = "a lighthouse", seed: int = 1,
                sampler: str = "euler", upload: bool = True) -> Job:
    graph = Graph.from_api(img2img_prompt(image, seed=seed, checkpoint=ckpt, prefix="farm", positive=text,
                                          negative="blurry", sampler=sampler))
    return Job(graph=graph, inputs={image: Path(image)} if upload else {})


# --- what a job needs, what a server has -------------------------------------------------------

def test_job_needs_name_checkpoint_image_and_texts() -> None:
    needs = job_needs(img2img_job(image="cat.png", text="a cat"))
    assert needs.checkpoint == CKPT
    assert needs.images == {"cat.png"}
    assert needs.texts == {"a cat", "blurry"}
    assert needs.uploads == {"cat.png"}
    assert "KSampler" in needs.class_types
    assert ("KSampler", "sampler_name", "euler") in needs.literals


@pytest.mark.parametrize(("job", "lacking"), [
    (img2img_job(), []),
    (img2img_job(ckpt="sdxl.safetensors"), ["CheckpointLoaderSimple.ckpt_name 'sdxl.safetensors'"]),
    (img2img_job(sampler="no-such-sampler"), ["KSampler.sampler_name 'no-such-sampler'"]),
    (img2img_job(upload=False, image="absent.png"), ["LoadImage.image 'absent.png'"]),
])
def test_capability_lists_what_a_server_lacks(job: Job, lacking: list[str]) -> None:
    capability = Capability(Schema.recorded())
    assert capability.lacks(job_needs(job)) == lacking
    assert capability.can_run(job_needs(job)) is (not lacking)


def test_capability_sees_missing_node_classes() -> None:
    raw = {name: info for name, info in Schema.recorded().raw.items() if name != "VAEEncode"}
    assert Capability(Schema(raw)).lacks(job_needs(img2img_job())) == ["node class VAEEncode"]


# --- affinity and the estimate -----------------------------------------------------------------

A = job_needs(img2img_job(ckpt="a.safetensors", image="x.png", text="red"))
A_OTHER_IMAGE = job_needs(img2img_job(ckpt="a.safetensors", image="y.png", text="green"))
A_SAME_TEXT = job_needs(img2img_job(ckpt="a.safetensors", image="y.png", text="red"))
B = job_needs(img2img_job(ckpt="b.safetensors", image="y.png", text="green"))


@pytest.mark.parametrize(("needs", "last", "score"), [
    (A, None, 0),
    (A, A, 7),
    (A, A_OTHER_IMAGE, 5),  # same checkpoint; shared negative text "blurry"
    (A_SAME_TEXT, A_OTHER_IMAGE, 7),
    (B, A, 1),  # only the negative prompt in common
    (B, A_OTHER_IMAGE, 3),
])
def test_affinity_scores_what_is_cached(needs: JobNeeds, last: JobNeeds | None, score: int) -> None:
    assert affinity(needs, last) == score


def view(name: str, *, order: int = 0, queued: int = 0, slots: int = 3, job_s: float = 1.0,
         switch_s: float = 2.0, last: JobNeeds | None = A, up: bool = True) -> ServerView:
    return ServerView(name=name, order=order, up=up, free_slots=slots - queued, queued=queued,
                      job_s=job_s, switch_s=switch_s, last=last)


@pytest.mark.parametrize(("server", "needs", "seconds"), [
    (view("s", queued=0, job_s=1.5), A, 1.5),
    (view("s", queued=2, job_s=1.5), A, 4.5),
    (view("s", queued=2, job_s=1.5), B, 6.5),  # plus a checkpoint load
    (view("s", queued=0, last=None), A, 3.0),  # nothing loaded yet
])
def test_estimate_counts_queue_and_checkpoint_load(server: ServerView, needs: JobNeeds, seconds: float) -> None:
    assert estimate_finish_s(server, needs) == pytest.approx(seconds)


# --- choosing a server ---------------------------------------------------------------------------

def waiting(*needs: JobNeeds, eligible: tuple[str, ...] = ("fast", "slow", "other")) -> list[WaitingJob]:
    return [WaitingJob(seq=i, needs=n, eligible=frozenset(eligible)) for i, n in enumerate(needs)]


@pytest.mark.parametrize(("me", "others", "jobs", "picked"), [
    # an idle server takes the oldest job it has cached
    (view("fast"), [view("slow", job_s=2.0)], waiting(A, A), 0),
    # a 2x slower server takes work while the fast one has 3 queued (2 < 4 s)
    (view("slow", job_s=2.0), [view("fast", queued=3)], waiting(A), 0),
    # a 5x slower server leaves it for the fast one, even full (5 > 4 s)
    (view("slow", job_s=5.0), [view("fast", queued=3)], waiting(A), None),
    # affinity: skips a job of another checkpoint for one of its own
    (view("fast", last=A), [view("slow", last=B)], waiting(B, A), 1),
    # ... but takes the other checkpoint when no server has it loaded sooner
    (view("fast", last=A), [view("slow", last=A, queued=3)], waiting(B), 0),
    # it leaves a job to the server that has its checkpoint loaded and room
    (view("fast", last=A), [view("other", last=B, job_s=1.2)], waiting(B), None),
    # a down server's estimate does not count
    (view("fast", last=A), [view("other", last=B, up=False)], waiting(B), 0),
    # same checkpoint: prefers the job whose image and text are cached too
    (view("fast", last=A), [view("slow", queued=3)], waiting(A_OTHER_IMAGE, A), 1),
    # a checkpoint load pays only when the loaded server's backlog of that checkpoint outlasts it
    (view("fast", last=A, switch_s=6.0), [view("slow", last=B, queued=3)], waiting(B), None),
    (view("fast", last=A, switch_s=6.0), [view("slow", last=B, queued=3)], waiting(B, B, B, B, B), 0),
    # a backlog shared by two servers that have it loaded is shorter
    (view("fast", last=A, switch_s=6.0), [view("slow", last=B, queued=3), view("other", last=B, queued=3)],
     waiting(B, B, B, B, B), None),
    # an idle server with nothing loaded takes the checkpoint no other server has
    (view("fast", last=None), [view("slow", last=A, queued=1)], waiting(A, B), 1),
    # jobs it may not run are skipped
    (view("fast"), [view("slow")], waiting(A, eligible=("slow",)), None),
])
def test_soonest_finish_picks(me: ServerView, others: list[ServerView], jobs: list[WaitingJob],
                              picked: int | None) -> None:
    assert SoonestFinish().pick(me, jobs, [me, *others]) == picked


def test_soonest_finish_looks_only_so_far_ahead() -> None:
    me, other = view("fast", last=A), view("slow", last=B)
    jobs = waiting(B, B, B, A)
    assert SoonestFinish(lookahead=4).pick(me, jobs, [me, other]) == 3
    assert SoonestFinish(lookahead=2).pick(me, jobs, [me, other]) is None


@pytest.mark.parametrize(("me", "holders", "queued", "stolen"), [
    # idle, same speed: moves a job two places back (2.5 s there, 1 s here)
    (view("fast", last=A), [view("slow", queued=3)], [QueuedJob("slow", 1, A), QueuedJob("slow", 2, A)], 1),
    # one place back is worth it too (1.5 s there), unless a checkpoint load eats the gain
    (view("fast", last=A), [view("slow", queued=2)], [QueuedJob("slow", 1, A)], 0),
    (view("fast", last=B), [view("slow", queued=2)], [QueuedJob("slow", 1, A)], None),
    # a busy thief only takes what it finishes sooner than the holder
    (view("fast", last=A, queued=2), [view("slow", queued=3)], [QueuedJob("slow", 2, A)], None),
    (view("fast", last=A, queued=1), [view("slow", queued=3, job_s=3.0)], [QueuedJob("slow", 1, A)], 0),
    # the running job itself is never moved
    (view("fast", last=A), [view("slow", queued=1)], [QueuedJob("slow", 0, A)], None),
])
def test_soonest_finish_steals_from_long_queues(me: ServerView, holders: list[ServerView], queued: list[QueuedJob],
                                                stolen: int | None) -> None:
    assert SoonestFinish().steal(me, queued, [me, *holders]) == stolen
    assert RoundRobin().steal(me, queued, [me, *holders]) is None


@pytest.mark.parametrize(("me", "down", "picked"), [
    (view("fast", order=0), False, 0),
    (view("slow", order=1), False, 1),
    (view("slow", order=1), True, 0),  # the turn of a down server passes to anyone
])
def test_round_robin_takes_its_turns(me: ServerView, down: bool, picked: int) -> None:
    first = view("fast", order=0, up=not down) if me.name != "fast" else me
    second = view("slow", order=1) if me.name != "slow" else me
    assert RoundRobin().pick(me, waiting(A, A, A), [first, second]) == picked


# --- job times -------------------------------------------------------------------------------------

def test_job_times_learn_warm_and_switch_costs() -> None:
    times = JobTimes(window=4)
    assert (times.job_s(1.0), times.switch_s(0.5)) == (1.0, 0.5)
    times.add(3.0, loaded_checkpoint=True)  # a cold job says little about a warm one
    assert (times.job_s(1.0), times.switch_s(0.5)) == (1.0, 0.5)
    for seconds in (1.0, 1.2, 50.0, 1.1, 0.9):  # the outlier (a GC pause) is outvoted
        times.add(seconds, loaded_checkpoint=False)
    assert times.job_s(1.0) == pytest.approx(1.15)
    assert times.switch_s(0.5) == pytest.approx(3.0 - 1.15)


# --- retries -----------------------------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=4, first_delay_s=2.0, max_delay_s=10.0)


@pytest.mark.parametrize(("attempt", "seconds"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)])
def test_retry_delay_doubles_up_to_the_cap(attempt: int, seconds: float) -> None:
    assert POLICY.delay(attempt) == seconds
    assert POLICY.delay(attempt, jitter=0.5) == seconds / 2


def oom(server: str) -> OutOfMemory:
    return OutOfMemory("p", node_id="6", node_type="KSampler", message="CUDA out of memory\nmore", server=server)


def failed(server: str, message: str = "boom") -> ExecutionFailed:
    return ExecutionFailed("p", node_id="6", node_type="KSampler", message=message, server=server)


def rejected(server: str, kind: str = "value_not_in_list") -> PromptRejected:
    return PromptRejected("bad", server=server, error={"type": "prompt_outputs_failed_validation"},
                          node_errors={"6": {"errors": [{"type": kind}], "class_type": "KSampler"}})


@pytest.mark.parametrize(("error", "earlier", "untried", "retry", "avoid_s", "down"), [
    # retryable: again, after the server's rest; the server's own faults mark it down
    (ConnectionFailed("refused", server="a"), [], {"b"}, True, 2.0, True),
    (JobLost("p", server="a"), [], {"b"}, True, 2.0, False),
    (JobTimedOut("p", timeout_s=9, server="a"), [Attempt("b", JobLost("p", server="b"))], set(), True, 4.0, True),
    # retryable but out of attempts: reported
    (JobLost("p", server="a"), [Attempt("b", JobLost("p", server="b"))] * 3, {"c"}, False, 0.0, False),
    # a missing model: another server may have it, this one never will
    (MissingModel("no ckpt", server="a"), [], {"b"}, True, math.inf, False),
    (MissingModel("no ckpt", server="a"), [], set(), False, 0.0, False),
    # deterministic: one more try elsewhere, never here again
    (oom("a"), [], {"b"}, True, math.inf, False),
    (rejected("a"), [], {"b"}, True, math.inf, False),
    (failed("a"), [], set(), False, 0.0, False),
    # the same deterministic failure on a second server: the job is at fault
    (oom("b"), [Attempt("a", oom("a"))], {"c"}, False, 0.0, False),
    (rejected("b"), [Attempt("a", rejected("a"))], {"c"}, False, 0.0, False),
    (failed("b", "boom\ntrace"), [Attempt("a", failed("a", "boom\nother trace"))], {"c"}, False, 0.0, False),
    # a different failure on the second server gets another try
    (failed("b", "other"), [Attempt("a", failed("a"))], {"c"}, True, math.inf, False),
    (rejected("b", "value_bigger_than_max"), [Attempt("a", rejected("a"))], {"c"}, True, math.inf, False),
])
def test_retry_decisions(error: Exception, earlier: list[Attempt], untried: set[str], retry: bool,
                         avoid_s: float, down: bool) -> None:
    assert isinstance(error, (ConnectionFailed, JobLost, JobTimedOut, MissingModel, ExecutionFailed,
                              PromptRejected))
    decision = decide_retry(error, earlier, server=getattr(error, "server"), untried=frozenset(untried),
                            policy=POLICY)
    assert (decision.retry, decision.server_down) == (retry, down)
    if retry:
        assert decision.avoid_s == avoid_s


def test_ledger_keeps_the_first_completion_only() -> None:
    ledger = CompletionLedger()
    assert ledger.settle(7, "a") is True
    assert ledger.settle(7, "b") is False
    assert ledger.settle(8, "b") is True
    assert ledger.winner(7) == "a"
    ledger.forget(7)
    assert ledger.winner(7) is None


def test_a_farm_file_may_accept_a_token_in_clear_and_names_its_ca_beside_it(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "farm-ca.pem").write_text("a PEM\n")
    path = tmp_path / "farm.toml"
    path.write_text('[[server]]\nurl = "http://box:8080"\ntoken = "t"\nallow_plain_http = true\n'
                    '[[server]]\nurl = "https://box:8443"\nca_cert = "certs/farm-ca.pem"\n'
                    '[[server]]\nurl = "https://box2:8443"\n')
    clear, own, default = load_farm(path, ca_cert=tmp_path / "certs" / "farm-ca.pem")
    assert clear.allow_plain_http and own.ca_cert == tmp_path / "certs" / "farm-ca.pem"
    assert default.ca_cert == tmp_path / "certs" / "farm-ca.pem"
    assert load_farm(path)[2].ca_cert is None


@pytest.mark.parametrize(("idle", "holder", "needs", "running_for_s", "copy"), [
    (view("idle", job_s=1.0), view("slow", job_s=10.0), A, 0.0, True),  # 1 s here against 10 s left there
    (view("idle", job_s=1.0), view("slow", job_s=10.0), A, 8.5, False),  # it is nearly done: 1.5 s left
    (view("idle", job_s=1.0), view("peer", job_s=1.0), A, 0.2, False),  # as fast: never worth a copy
    (view("idle", job_s=1.0), view("peer", job_s=1.0), A, 1.9, False),  # a little late
    (view("idle", job_s=1.0), view("peer", job_s=1.0), A, 2.0, True),  # overdue: stuck, or far slower
    (view("idle", job_s=1.0), view("slow", job_s=4.0), B, 0.0, False),  # loading B first: 3 s, not 2
    (view("idle", job_s=1.0), view("slow", job_s=6.0), B, 0.0, True),
])
def test_only_a_far_slower_running_job_is_worth_a_copy(idle: ServerView, holder: ServerView, needs: JobNeeds,
                                                       running_for_s: float, copy: bool) -> None:
    assert worth_duplicating(idle, holder, needs, running_for_s=running_for_s, factor=2.0) is copy
