"""comfy_orchestrator: run ComfyUI workflows at scale.

The public names load on first use (PEP 562): `import comfy_orchestrator`, and a command
that needs little of the package (`comfy-orch --help`), pay only for what they touch.
Type checkers see the names through the imports under TYPE_CHECKING.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.denoise_guide import DENOISE_GUIDE
    from comfy_orchestrator.errors import (
        AuthFailed,
        BrokerAuthFailed,
        BrokerError,
        BrokerUnreachable,
        BrokerURLInvalid,
        Cancelled,
        CertificateRejected,
        ComfyError,
        ConnectionFailed,
        ExecutionFailed,
        FarmFileInvalid,
        GraphInvalid,
        GridFailed,
        Interrupted,
        JobLost,
        JobTimedOut,
        JournalFailed,
        MalformedMessage,
        MissingModel,
        NoServerAvailable,
        OutOfMemory,
        ParameterError,
        PromptRejected,
        RequestTimedOut,
        ServerError,
        SweepError,
        TemplateBroken,
        TemplateError,
        TemplateNotFound,
        UnsafeOutput,
        WorkerJobFailed,
        WorkflowImportError,
    )
    from comfy_orchestrator.farm import Farm, JobFailed
    from comfy_orchestrator.graph import Graph, Node
    from comfy_orchestrator.job_handle import JobHandle
    from comfy_orchestrator.jobs import Job, JobResult, Output
    from comfy_orchestrator.journal import Journal
    from comfy_orchestrator.limits import Limits, Timeouts
    from comfy_orchestrator.params import WORKFLOWS
    from comfy_orchestrator.params_base import Params
    from comfy_orchestrator.retry import RetryPolicy
    from comfy_orchestrator.schema import Schema
    from comfy_orchestrator.servers import ServerConfig, load_farm
    from comfy_orchestrator.sweep import Axis, Cell, Sweep, parse_axis
    from comfy_orchestrator.sweep_progress import SweepProgress
    from comfy_orchestrator.sweep_run import SweepReport, plan_sweep, run_sweep
    from comfy_orchestrator.templates import Template, Templates
    from comfy_orchestrator.transport import SharedAnswers
    from comfy_orchestrator.validation import PromptCheck, check_prompt

# each public name and the module it lives in, relative to the package
_HOMES = {
    "AuthFailed": "errors",
    "Axis": "sweep",
    "BrokerAuthFailed": "errors",
    "BrokerError": "errors",
    "BrokerURLInvalid": "errors",
    "BrokerUnreachable": "errors",
    "Cancelled": "errors",
    "Cell": "sweep",
    "CertificateRejected": "errors",
    "Client": "client",
    "ComfyError": "errors",
    "ConnectionFailed": "errors",
    "DENOISE_GUIDE": "denoise_guide",
    "ExecutionFailed": "errors",
    "Farm": "farm",
    "FarmFileInvalid": "errors",
    "Graph": "graph",
    "GraphInvalid": "errors",
    "GridFailed": "errors",
    "Interrupted": "errors",
    "Job": "jobs",
    "JobFailed": "farm",
    "JobHandle": "job_handle",
    "JobLost": "errors",
    "JobResult": "jobs",
    "JobTimedOut": "errors",
    "Journal": "journal",
    "JournalFailed": "errors",
    "Limits": "limits",
    "MalformedMessage": "errors",
    "MissingModel": "errors",
    "NoServerAvailable": "errors",
    "Node": "graph",
    "OutOfMemory": "errors",
    "Output": "jobs",
    "ParameterError": "errors",
    "Params": "params_base",
    "PromptCheck": "validation",
    "PromptRejected": "errors",
    "RequestTimedOut": "errors",
    "RetryPolicy": "retry",
    "Schema": "schema",
    "ServerConfig": "servers",
    "ServerError": "errors",
    "SharedAnswers": "transport",
    "Sweep": "sweep",
    "SweepError": "errors",
    "SweepProgress": "sweep_progress",
    "SweepReport": "sweep_run",
    "Template": "templates",
    "TemplateBroken": "errors",
    "TemplateError": "errors",
    "TemplateNotFound": "errors",
    "Templates": "templates",
    "Timeouts": "limits",
    "UnsafeOutput": "errors",
    "WORKFLOWS": "params",
    "WorkerJobFailed": "errors",
    "WorkflowImportError": "errors",
    "check_prompt": "validation",
    "load_farm": "servers",
    "parse_axis": "sweep",
    "plan_sweep": "sweep_run",
    "run_sweep": "sweep_run",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AuthFailed",
    "Axis",
    "BrokerAuthFailed",
    "BrokerError",
    "BrokerURLInvalid",
    "BrokerUnreachable",
    "Cancelled",
    "Cell",
    "CertificateRejected",
    "Client",
    "ComfyError",
    "ConnectionFailed",
    "DENOISE_GUIDE",
    "ExecutionFailed",
    "Farm",
    "FarmFileInvalid",
    "Graph",
    "GraphInvalid",
    "GridFailed",
    "Interrupted",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobLost",
    "JobResult",
    "JobTimedOut",
    "Journal",
    "JournalFailed",
    "Limits",
    "MalformedMessage",
    "MissingModel",
    "NoServerAvailable",
    "Node",
    "OutOfMemory",
    "Output",
    "ParameterError",
    "Params",
    "PromptCheck",
    "PromptRejected",
    "RequestTimedOut",
    "RetryPolicy",
    "Schema",
    "ServerConfig",
    "ServerError",
    "SharedAnswers",
    "Sweep",
    "SweepError",
    "SweepProgress",
    "SweepReport",
    "Template",
    "TemplateBroken",
    "TemplateError",
    "TemplateNotFound",
    "Templates",
    "Timeouts",
    "UnsafeOutput",
    "WORKFLOWS",
    "WorkerJobFailed",
    "WorkflowImportError",
    "check_prompt",
    "load_farm",
    "parse_axis",
    "plan_sweep",
    "run_sweep",
]
