"""The six agents, by name: what the app builder deploys and the gateway routes to."""

from __future__ import annotations

from agents.base import Agent
from agents.business import BusinessGenerationAgent
from agents.code_review import CodeReviewAgent
from agents.documentation import DocumentationAgent
from agents.qa import QAAgent
from agents.se_darwin import SEDarwinAgent
from agents.support import SupportAgent

__all__ = ["AGENTS", "agent_by_name"]

AGENTS: tuple[type[Agent], ...] = (
    SupportAgent,
    DocumentationAgent,
    BusinessGenerationAgent,
    QAAgent,
    CodeReviewAgent,
    SEDarwinAgent,
)


def agent_by_name(name: str) -> type[Agent]:
    """The agent class whose `name` (the URL segment, e.g. "code-review") is `name`; KeyError naming the
    known agents otherwise."""
    for agent in AGENTS:
        if agent.name == name:
            return agent
    raise KeyError(f"unknown agent {name!r}; known agents: {', '.join(a.name for a in AGENTS)}")
