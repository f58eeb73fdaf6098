"""Every error comfy_orchestrator raises, in one tree.

::

    ComfyError                      retryable?
    ├── ParameterError              no   a parameter value is wrong (names it)
    ├── TemplateError               no
    │   ├── TemplateNotFound        no   no template of that name
    │   └── TemplateBroken          no   a template does not render or parse
    ├── GraphInvalid                no   a graph fails validation against a schema
    ├── WorkflowImportError         no   a saved workflow cannot become a template
    ├── SweepError                  no   an axis or a sweep is malformed
    ├── JournalFailed               no   a sweep's journal cannot be read or written
    ├── GridFailed                  no   a grid image or the results page cannot be made
    ├── ServerError                 yes  the server misbehaved (5xx, bad answer)
    │   ├── ConnectionFailed        yes  the server could not be reached
    │   ├── RequestTimedOut         yes  the server did not answer in time
    │   └── MalformedMessage        yes  a websocket frame or answer is not what ComfyUI sends
    ├── AuthFailed                  no   401/403 from the server or its proxy
    ├── CertificateRejected         no   the server's TLS certificate did not verify
    ├── PromptRejected              no   the server refused the prompt (node_errors)
    │   └── MissingModel            yes  the server lacks a model the prompt names
    ├── ExecutionFailed             no   a node raised while the prompt ran
    │   └── OutOfMemory             no   ... because the GPU ran out of memory
    ├── Interrupted                 no   the prompt was interrupted
    │   └── Cancelled               no   ... because we stopped it (taken off the queue or interrupted)
    ├── JobLost                     yes  the server no longer knows the prompt
    ├── JobTimedOut                 yes  the prompt did not finish by its deadline
    ├── UnsafeOutput                no   an output file name would escape its folder
    ├── NoServerAvailable           no   no server of a farm can take the job
    ├── FarmFileInvalid             no   a farm file (or --server list) is malformed
    ├── WorkerJobFailed             as on the worker  a job failed on a queue worker (names it)
    └── BrokerError                 no   the queue's broker (Redis) cannot be used
        ├── BrokerURLInvalid        no   the broker URL is malformed
        ├── BrokerUnreachable       no   the broker does not answer (or its TLS fails)
        └── BrokerAuthFailed        no   the broker refused the URL's credentials
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ComfyError(Exception):
    """Base of every error this package raises."""

    retryable: bool = False


class ParameterError(ComfyError, ValueError):
    """A parameter value is wrong; the message names it and what is allowed."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class TemplateError(ComfyError):
    """A template cannot be found, loaded or rendered."""


class TemplateNotFound(TemplateError, LookupError):
    """No template of that name exists in any template folder."""

    def __init__(self, name: str, *, available: Sequence[str]) -> None:
        choices = ", ".join(sorted(available)) or "none"
        super().__init__(f"no template named {name!r}; available: {choices}")
        self.name = name
        self.available = tuple(available)


class TemplateBroken(TemplateError):
    """A template's text or its declarations are wrong."""

    def __init__(self, message: str, *, template: str) -> None:
        super().__init__(f"template {template!r}: {message}")
        self.template = template


class GraphInvalid(ComfyError):
    """A graph fails validation; `issues` holds one line per problem."""

    def __init__(self, issues: Sequence[str], *, template: str | None = None) -> None:
        where = f"template {template!r}: " if template else ""
        super().__init__(where + "; ".join(issues))
        self.issues = tuple(issues)
        self.template = template


class WorkflowImportError(ComfyError):
    """A saved workflow cannot be turned into a template."""

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        where = f"node {node_id}: " if node_id is not None else ""
        super().__init__(where + message)
        self.node_id = node_id


class SweepError(ComfyError, ValueError):
    """An axis or a sweep definition is malformed."""


class JournalFailed(ComfyError):
    """A sweep's SQLite journal cannot be opened, read or written."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class GridFailed(ComfyError):
    """A grid image or the results page cannot be made (an image is unreadable, the folder unwritable)."""


class ServerError(ComfyError):
    """The server misbehaved; the job may succeed on a retry or elsewhere."""

    retryable = True

    def __init__(self, message: str, *, server: str, status: int | None = None) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.status = status


class ConnectionFailed(ServerError):
    """The server could not be reached."""


class RequestTimedOut(ServerError):
    """The server did not answer within the call's timeout."""


class MalformedMessage(ServerError):
    """A websocket frame or an HTTP answer is not in ComfyUI's format."""

    def __init__(self, message: str, *, server: str = "") -> None:
        super().__init__(message, server=server or "server")


class CertificateRejected(ComfyError):
    """The server's TLS certificate did not verify: `reason` is what did not match.

    `reason` is "unknown authority", "wrong host name", "expired", "not yet valid" or
    "not trusted"; `detail` is OpenSSL's own words. Retrying will not help.
    """

    def __init__(self, reason: str, *, server: str, detail: str, hint: str) -> None:
        super().__init__(f"{server}: TLS certificate rejected, {reason} ({detail}): {hint}")
        self.server = server
        self.reason = reason
        self.detail = detail


class AuthFailed(ComfyError):
    """The server, or the proxy in front of it, refused our credentials."""

    def __init__(self, message: str, *, server: str, status: int) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.status = status


class PromptRejected(ComfyError):
    """The server refused the prompt at validation; `node_errors` says why."""

    def __init__(
        self,
        message: str,
        *,
        server: str,
        error: Mapping[str, Any] | None = None,
        node_errors: Mapping[str, Any] | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.error = dict(error or {})
        self.node_errors = dict(node_errors or {})
        # node_id.input -> template parameter, where the graph came from a template
        self.parameters = dict(parameters or {})


class MissingModel(PromptRejected):
    """The server lacks a model file that the prompt names; another server may have it."""

    retryable = True


class ExecutionFailed(ComfyError):
    """A node raised an exception while the prompt ran."""

    def __init__(
        self,
        prompt_id: str,
        *,
        node_id: str | None,
        node_type: str | None,
        message: str,
        exception_type: str = "",
        traceback: Sequence[str] = (),
        server: str = "",
    ) -> None:
        where = f"node {node_id} ({node_type})" if node_id else "the server"
        super().__init__(f"prompt {prompt_id} failed in {where}: {message.strip()}")
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_message = message
        self.exception_type = exception_type
        self.traceback = tuple(traceback)
        self.server = server


class OutOfMemory(ExecutionFailed):
    """The GPU ran out of memory; a smaller or tiled job may fit."""

    advice = (
        "try the 'tiled' workflow (VAEEncodeTiled/VAEDecodeTiled), a smaller image, "
        "or a smaller batch"
    )

    def __str__(self) -> str:
        return f"{super().__str__()} -- out of memory: {self.advice}"

    def advise(self, advice: str) -> None:
        """Replace the general advice with concrete next values for the job that failed."""
        self.advice = advice


class Interrupted(ComfyError):
    """The prompt was interrupted before it finished."""

    def __init__(self, prompt_id: str, *, node_id: str | None = None, server: str = "") -> None:
        at = f" at node {node_id}" if node_id else ""
        super().__init__(f"prompt {prompt_id} was interrupted{at}")
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.server = server


class Cancelled(Interrupted):
    """We stopped the prompt: it was taken off the queue, or interrupted while it ran."""

    def __init__(self, prompt_id: str, *, how: str, node_id: str | None = None, server: str = "") -> None:
        ComfyError.__init__(self, f"prompt {prompt_id} was cancelled ({how})")
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.server = server
        self.how = how


class JobLost(ComfyError):
    """The server knows the prompt neither in its queue nor in its history."""

    retryable = True

    def __init__(self, prompt_id: str, *, server: str) -> None:
        super().__init__(
            f"{server}: prompt {prompt_id} is in neither the queue nor the history "
            "(deleted, or the server restarted); submit it again"
        )
        self.prompt_id = prompt_id
        self.server = server


class JobTimedOut(ComfyError):
    """The prompt did not finish before its deadline."""

    retryable = True

    def __init__(self, prompt_id: str, *, timeout_s: float, server: str) -> None:
        super().__init__(f"{server}: prompt {prompt_id} did not finish within {timeout_s:g} s")
        self.prompt_id = prompt_id
        self.timeout_s = timeout_s
        self.server = server


class UnsafeOutput(ComfyError):
    """A server-given file name would leave the output folder."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refusing output file name {name!r}: it would leave the output folder")
        self.name = name


class NoServerAvailable(ComfyError):
    """No server of the farm is up and able to run the job."""


class FarmFileInvalid(ComfyError, ValueError):
    """A farm file, or a list of --server URLs, is malformed; the message says where."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class WorkerJobFailed(ComfyError):
    """A job failed on a queue worker: its error's type and text, retryable as that error was."""

    def __init__(self, message: str, *, kind: str, retryable: bool, worker: str) -> None:
        super().__init__(message)
        self.kind = kind  # the worker's error class, such as ExecutionFailed
        self.retryable = retryable
        self.worker = worker


class BrokerError(ComfyError):
    """The queue's broker (Redis) cannot be used; the message names it without its password."""

    def __init__(self, message: str, *, broker: str) -> None:
        super().__init__(f"{broker}: {message}")
        self.broker = broker  # the URL with any password masked


class BrokerURLInvalid(BrokerError, ValueError):
    """The broker URL is not a redis:// or rediss:// URL we can use."""


class BrokerUnreachable(BrokerError):
    """The broker did not answer: wrong host or port, a firewall, or a TLS handshake that failed."""


class BrokerAuthFailed(BrokerError):
    """The broker refused the URL's user name or password."""
