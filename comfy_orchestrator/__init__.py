"""comfy_orchestrator: run ComfyUI workflows at scale."""

from comfy_orchestrator.client import Client
from comfy_orchestrator.errors import (
    AuthFailed,
    BrokerAuthFailed,
    BrokerError,
    BrokerUnreachable,
    BrokerURLInvalid,
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
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.params import DENOISE_GUIDE, WORKFLOWS, Params
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import ServerConfig, load_farm
from comfy_orchestrator.sweep import Axis, Cell, Sweep, parse_axis
from comfy_orchestrator.sweep_run import SweepProgress, SweepReport, plan_sweep, run_sweep
from comfy_orchestrator.templates import Template, Templates
from comfy_orchestrator.validation import PromptCheck, check_prompt

__all__ = [
    "AuthFailed",
    "Axis",
    "BrokerAuthFailed",
    "BrokerError",
    "BrokerURLInvalid",
    "BrokerUnreachable",
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
