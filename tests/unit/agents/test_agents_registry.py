from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agents
from agents import AGENTS, Agent, AgentRequest, agent_by_name

AGENTS_DIR = Path(agents.__file__).parent

EXPECTED = {
    "support": ("answer", "support_kb"),
    "documentation": ("lookup", "documentation"),
    "business": ("generate", "business_templates"),
    "qa": ("generate-tests", "test_templates"),
    "code-review": ("review", "code_patterns"),
    "se-darwin": ("evolve", "darwin_operators"),
}


def test_six_agents_with_the_contract_routes_and_collections():
    assert {a.name: (a.route, a.collection) for a in AGENTS} == EXPECTED
    for agent in AGENTS:
        assert issubclass(agent, Agent)
        assert issubclass(agent.request_model, AgentRequest)
        assert agent.system_prompt.strip()
        agent()  # concrete: every abstract method is implemented


def test_agent_by_name():
    for agent in AGENTS:
        assert agent_by_name(agent.name) is agent
    with pytest.raises(KeyError, match="code-review"):
        agent_by_name("nope")


def test_package_exports_exist():
    for name in agents.__all__:
        assert hasattr(agents, name), name


def test_request_models_take_the_shared_options():
    for agent in AGENTS:
        fields = agent.request_model.model_fields
        assert {"top_k", "max_tokens", "temperature", "stream", "use_cache"} <= set(fields)
        for name, field in fields.items():
            assert field.description, f"{agent.name}.{name} has no description"


def test_agents_do_not_import_ray_serve_or_network_clients():
    forbidden = {"ray", "vllm", "redis", "requests", "httpx", "fastapi"}
    for path in AGENTS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{path.name} imports {roots & forbidden}"
