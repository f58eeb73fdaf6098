"""comfy_orchestrator: run ComfyUI workflows at scale."""

from comfy_orchestrator.errors import (
    AuthFailed,
    ComfyError,
    ConnectionFailed,
    ExecutionFailed,
    FarmFileInvalid,
    GraphInvalid,
    Interrupted,
    JobLost,
    JobTimedOut,
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
    WorkflowImportError,
)
from comfy_orchestrator.client import Client, JobHandle
from comfy_orchestrator.farm import Farm, JobFailed, RetryPolicy, ServerConfig, load_farm
from comfy_orchestrator.graph import Graph, Node
from comfy_orchestrator.jobs import Job, JobResult, Output
from comfy_orchestrator.params import DENOISE_GUIDE, WORKFLOWS, Params
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.templates import Template, Templates
from comfy_orchestrator.validation import PromptCheck, check_prompt

__all__ = [
    "AuthFailed",
    "Client",
    "ComfyError",
    "ConnectionFailed",
    "DENOISE_GUIDE",
    "ExecutionFailed",
    "Farm",
    "FarmFileInvalid",
    "Graph",
    "GraphInvalid",
    "Interrupted",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobLost",
    "JobResult",
    "JobTimedOut",
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
    "SweepError",
    "Template",
    "TemplateBroken",
    "TemplateError",
    "TemplateNotFound",
    "Templates",
    "UnsafeOutput",
    "WORKFLOWS",
    "WorkflowImportError",
    "check_prompt",
    "load_farm",
]
