"""``deployments.app``: the YAML ``args`` (``AppArgs``) and ``build``.

The keys are ``serve_config.yaml``'s (a contract: they must not change silently), so the tests address
them by their YAML paths. ``build`` only composes the application (``.options().bind()``): it must not
start Ray, and these tests check that it does not.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from pydantic import BaseModel, ValidationError

from agents.registry import AGENTS
from deployments.app import AppArgs, build

REPO = Path(__file__).resolve().parents[3]
AGENT_NAMES = [a.name for a in AGENTS]


def yaml_args(name: str = "serve_config.yaml") -> dict[str, Any]:
    """The ``args`` of a shipped serve config (``serve_config.yaml`` unless named)."""
    config = yaml.safe_load((REPO / name).read_text())
    return config["applications"][0]["args"]


def yaml_paths(tree: Any, prefix: str = "") -> set[str]:
    """Every key path of a YAML mapping ("llm.engine.kv_cache_memory_bytes", ...)."""
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(yaml_paths(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in tree.items()))


def at(obj: Any, path: str) -> Any:
    """The value under a YAML path ("cache.num_shards", "agents.support.ttl_s") of a validated AppArgs."""
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def nested(path: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def offline_args(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """Args that make ``build`` touch nothing outside tmp_path: no model download, no sample loading."""
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    args: dict[str, Any] = {
        "model": {"path": str(model_dir), "name": "test-model"},
        "cache": {"redis_url": "none"},
        "retrieval": {"db_path": str(tmp_path / "store.sqlite3"), "settings": {"load_samples": False}},
    }
    args.update(extra)
    return args


# ------------------------------------------------------------------ validation


def test_the_shipped_serve_config_validates():
    args = AppArgs.model_validate(yaml_args())
    assert sorted(args.agents) == sorted(AGENT_NAMES)
    assert at(args, "agents.qa.max_cache_size_mb") == 150 and at(args, "agents.support.ttl_s") == 3600
    assert at(args, "llm.router.request_router_kwargs") == {"load_factor": 2.0, "block_size": 16, "max_blocks": 64,
                                                           "vnodes": 128, "kv_routing": {"enabled": False}}
    assert at(args, "llm.kv_events.enabled") is False  # KV-event publishing and routing ship off


def test_the_small_profile_validates_sets_the_same_keys_and_is_smaller():
    """serve_config.small.yaml (make run-small) serves all six agents on one engine with a smaller KV cache;
    it spells out every key serve_config.yaml does, so no setting silently falls back to a code default."""
    small, full = AppArgs.model_validate(yaml_args("serve_config.small.yaml")), AppArgs.model_validate(yaml_args())
    assert yaml_paths(yaml_args("serve_config.small.yaml")) == yaml_paths(yaml_args())
    assert sorted(small.agents) == sorted(AGENT_NAMES)
    assert at(small, "llm.num_replicas") == 1 < at(full, "llm.num_replicas")
    assert at(small, "llm.engine.kv_cache_memory_bytes") == 512 << 20
    assert at(small, "cache.num_shards") <= at(full, "cache.num_shards")
    assert all(small.agents[a].max_cache_size_mb < full.agents[a].max_cache_size_mb for a in AGENT_NAMES)
    assert small.retrieval == full.retrieval and small.model == full.model


@pytest.mark.parametrize("section", [
    "",  # top level
    "model",
    "llm",
    "llm.engine",
    "llm.router",
    "gateway",
    "cache",
    "retrieval",
    "retrieval.settings",
    "retrieval.settings.ingest",
    "retrieval.embedder",
    "retrieval.embedder_scale",
    "agents.support",
])
def test_unknown_keys_are_refused_in_every_section(section):
    path = f"{section}.no_such_key" if section else "no_such_key"
    with pytest.raises(ValidationError) as err:
        AppArgs.model_validate(nested(path, 1))
    assert "no_such_key" in str(err.value)


def test_a_typo_in_the_shipped_config_is_refused():
    args = yaml_args()
    typo = copy.deepcopy(args)
    typo["cache"]["num_shard"] = typo["cache"].pop("num_shards")
    with pytest.raises(ValidationError, match="num_shard"):
        AppArgs.model_validate(typo)


@pytest.mark.parametrize("path, value", [
    ("llm.num_replicas", 0),
    ("gateway.request_timeout_s", 0),
    ("cache.num_shards", 0),
    ("cache.shard_max_mb", 0),
    ("cache.shard_claim_wait_s", -1),
    ("agents.support.num_replicas", 0),
    ("agents.support.num_cpus", 0),
    ("agents.support.max_cache_size_mb", 0),
    ("agents.support.ttl_s", 0),
    ("retrieval.settings.ingest.batch_size", 0),
    ("retrieval.settings.ingest.batch_timeout_s", 0),
    ("retrieval.settings.ingest.batch_retries", -1),
    ("retrieval.settings.ingest.job_threshold_chunks", -1),
    ("retrieval.settings.ingest.max_running_jobs", 0),
])
def test_out_of_range_values_are_refused(path, value):
    with pytest.raises(ValidationError):
        AppArgs.model_validate(nested(path, value))


def test_args_are_frozen():
    args = AppArgs()
    with pytest.raises(ValidationError):
        args.cache = None  # type: ignore[misc]


# ------------------------------------------------------------------ defaults


@pytest.mark.parametrize("path, default", [
    ("model.path", None),
    ("model.name", None),
    ("llm.num_replicas", 2),
    ("llm.num_cpus", 0.4),
    ("llm.max_ongoing_requests", 16),
    ("llm.max_queued_requests", 256),
    ("llm.bind_cores", True),
    ("llm.fallback", None),
    ("llm.router.request_router_class", "deployments.prefix_router:PrefixAffinityRouter"),
    ("gateway.num_replicas", 1),
    ("gateway.num_cpus", 0.1),
    ("gateway.request_timeout_s", 120.0),
    ("gateway.protect_reads", False),
    ("cache.num_shards", 2),
    ("cache.shard_max_mb", 256.0),
    ("cache.shard_ttl_s", 7200.0),
    ("cache.shard_timeout_s", 0.25),
    ("cache.shard_claim_lease_s", 0.5),
    ("cache.shard_claim_wait_s", None),
    ("cache.redis_url", None),
    ("cache.redis_ttl_s", 86_400.0),
    ("cache.redis_timeout_s", 0.2),
    ("retrieval.db_path", None),
    ("retrieval.data_dir", None),
    ("retrieval.embedder_scale.num_cpus", 0.1),
    ("retrieval.settings.ingest.batch_size", 32),
    ("retrieval.settings.ingest.batch_timeout_s", 60.0),
    ("retrieval.settings.ingest.batch_retries", 1),
    ("retrieval.settings.ingest.job_threshold_chunks", 64),
    ("retrieval.settings.ingest.max_running_jobs", 1),
    ("retrieval.settings.ingest.finished_job_ttl_s", 604_800.0),
    ("agents", {}),
])
def test_defaults_when_the_yaml_sets_nothing(path, default):
    assert at(AppArgs(), path) == default
    assert at(AppArgs.model_validate({}), path) == default


def test_the_shipped_ingest_settings_reach_the_gateway_config(tmp_path, no_ray):
    shipped = AppArgs.model_validate(yaml_args()).retrieval.settings.ingest
    assert shipped == AppArgs().retrieval.settings.ingest  # the YAML states the defaults
    app = build(offline_args(tmp_path, retrieval={
        "db_path": str(tmp_path / "store.sqlite3"),
        "settings": {"load_samples": False, "ingest": {"batch_size": 8, "job_threshold_chunks": 100}}}))
    gateway = _deployments(app)["gateway"]
    config = next(a for a in [*gateway.init_args, *gateway.init_kwargs.values()] if hasattr(a, "retrieval"))
    assert (config.retrieval.ingest.batch_size, config.retrieval.ingest.job_threshold_chunks) == (8, 100)
    assert config.retrieval.ingest.batch_timeout_s == 60.0


def test_a_section_given_in_part_keeps_the_other_defaults():
    args = AppArgs.model_validate({"cache": {"num_shards": 4}, "llm": {"engine": {"max_model_len": 2048}}})
    assert at(args, "cache.num_shards") == 4 and at(args, "cache.shard_max_mb") == 256.0
    assert at(args, "llm.engine.max_model_len") == 2048 and at(args, "llm.num_replicas") == 2


# ------------------------------------------------------------------ per-agent args


def test_per_agent_args_apply_to_that_agent_only():
    args = AppArgs.model_validate({"agents": {"support": {
        "num_replicas": 3, "num_cpus": 0.2, "max_cache_size_mb": 50, "ttl_s": 60, "collection": "other_kb",
        "warmup": False,
    }}})
    support = at(args, "agents.support")
    assert (support.num_replicas, support.num_cpus, support.max_cache_size_mb, support.ttl_s, support.collection,
            support.warmup) == (3, 0.2, 50, 60, "other_kb", False)
    assert list(args.agents) == ["support"]  # agents not named keep their own defaults (see build)


def test_agent_args_default_to_the_agents_own_settings():
    agent = AppArgs.model_validate({"agents": {"qa": {}}}).agents["qa"]
    # None: the agent class's own collection, cache budget and TTL apply
    assert (agent.collection, agent.max_cache_size_mb, agent.ttl_s, agent.warmup) == (None, None, None, True)
    assert (agent.num_replicas, agent.num_cpus) == (1, 0.05)


def test_agent_scale_options_replicas_or_autoscaling():
    fixed = AppArgs.model_validate({"agents": {"qa": {"num_replicas": 2, "num_cpus": 0.3, "memory_gb": 1}}})
    options = fixed.agents["qa"].options()
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.3, "memory": 1 << 30}

    autoscaled = AppArgs.model_validate({"agents": {"qa": {"num_replicas": 2, "autoscaling_config": {
        "min_replicas": 1, "max_replicas": 4}}}})
    options = autoscaled.agents["qa"].options()
    assert "num_replicas" not in options and options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}


# ------------------------------------------------------------------ build


@pytest.fixture
def no_ray():
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "build() must only compose the app, never start Ray"


def test_build_refuses_an_unknown_agent_name(tmp_path, no_ray):
    with pytest.raises(ValueError) as err:
        build(offline_args(tmp_path, agents={"support": {}, "no-such-agent": {}}))
    message = str(err.value)
    assert "no-such-agent" in message and "support" in message  # names the culprit and lists the known ones


def test_build_refuses_unknown_keys(tmp_path, no_ray):
    with pytest.raises(ValidationError, match="no_such_key"):
        build(offline_args(tmp_path, no_such_key=1))


def _deployments(app: Any) -> dict[str, Any]:
    """name -> bound deployment, over the whole application graph (``build`` binds; nothing runs)."""
    found: dict[str, Any] = {}

    def visit(value: Any) -> None:
        bound = getattr(value, "_bound_deployment", None)
        if bound is not None:
            if bound.name not in found:
                found[bound.name] = bound
                for arg in [*bound.init_args, *bound.init_kwargs.values()]:
                    visit(arg)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(app)
    return found


def _values_named(obj: Any, field: str, depth: int = 0) -> list[Any]:
    """Every value of a field called ``field`` inside configs (pydantic models, dataclasses, dicts)."""
    if depth > 6:
        return []
    out: list[Any] = []
    if isinstance(obj, BaseModel):
        items = {name: getattr(obj, name) for name in type(obj).model_fields}.items()
    elif hasattr(obj, "__dataclass_fields__"):
        items = {name: getattr(obj, name) for name in obj.__dataclass_fields__}.items()
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = ((None, v) for v in obj)
    else:
        return out
    for name, value in items:
        if name == field:
            out.append(value)
        out.extend(_values_named(value, field, depth + 1))
    return out


def test_build_composes_every_part_with_per_agent_args_without_starting_ray(tmp_path, no_ray):
    app = build(offline_args(tmp_path, agents={"support": {"num_replicas": 3, "num_cpus": 0.2,
                                                           "max_cache_size_mb": 42, "collection": "other_kb"}},
                             cache={"redis_url": "none", "num_shards": 3}))
    deployments = _deployments(app)
    agent_names = {f"agent_{name.replace('-', '_')}" for name in AGENT_NAMES}
    assert agent_names <= set(deployments)
    assert sum(1 for name in deployments if "shard" in name.lower()) == 3  # cache.num_shards

    support = deployments["agent_support"]
    assert support.num_replicas == 3 and support.ray_actor_options["num_cpus"] == 0.2
    support_args = [*support.init_args, *support.init_kwargs.values()]
    assert 42 in _values_named(support_args, "max_cache_size_mb")
    assert "other_kb" in _values_named(support_args, "collection")

    qa = deployments["agent_qa"]  # not named in the args: the agent's own budget and collection
    qa_args = [*qa.init_args, *qa.init_kwargs.values()]
    qa_cls = next(a for a in AGENTS if a.name == "qa")
    assert qa.num_replicas == 1
    assert qa_cls.cache_settings.max_cache_size_mb in _values_named(qa_args, "max_cache_size_mb")
    assert qa_cls.collection in _values_named(qa_args, "collection")


def test_max_replicas_per_node_is_passed_to_serve_only_when_set():
    assert "max_replicas_per_node" not in AppArgs.model_validate({}).llm.options()
    spread = AppArgs.model_validate({"llm": {"max_replicas_per_node": 1}, "gateway": {"max_replicas_per_node": 1}})
    assert spread.llm.options()["max_replicas_per_node"] == 1
    assert spread.gateway.options()["max_replicas_per_node"] == 1
    with pytest.raises(ValueError, match="max_replicas_per_node"):
        AppArgs.model_validate({"llm": {"max_replicas_per_node": 0}})
