"""The six RAG agents as plain classes (no Ray, no network, no model): prompt, collection, request
schema and post-processing per agent, on the contract in `agents.base`."""

from agents.base import Agent, AgentCacheSettings, AgentOutput, AgentRequest, EvolvingAgent
from agents.business import BusinessGenerationAgent, BusinessRequest
from agents.code_review import CodeReviewAgent, CodeReviewRequest
from agents.documentation import DocumentationAgent, DocumentationRequest
from agents.qa import QAAgent, QARequest
from agents.registry import AGENTS, agent_by_name
from agents.se_darwin import SEDarwinAgent, SEDarwinRequest
from agents.support import SupportAgent, SupportRequest

__all__ = [
    "AGENTS",
    "Agent",
    "AgentCacheSettings",
    "AgentOutput",
    "AgentRequest",
    "BusinessGenerationAgent",
    "BusinessRequest",
    "CodeReviewAgent",
    "CodeReviewRequest",
    "DocumentationAgent",
    "DocumentationRequest",
    "EvolvingAgent",
    "QAAgent",
    "QARequest",
    "SEDarwinAgent",
    "SEDarwinRequest",
    "SupportAgent",
    "SupportRequest",
    "agent_by_name",
]
