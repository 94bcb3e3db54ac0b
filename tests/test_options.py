"""Options declare their role on their schema field (posbench/common/options.py), and the run
identity, the eval-time override check and the resume check read the declarations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar, List

import pytest

from posbench.common.options import Role, at_test, execution, option, role_of, roles
from posbench.config import group_roles, group_schemas
from posbench.jobs.evaluate import eval_overrides
from posbench.runs.identity import RunIdentity, experiment_config
from tests.conftest import REPO


def committed_results() -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted((REPO / "experiments").rglob("results.json"))]
    return [doc for doc in docs if "identity" in doc and "config" in doc]


def test_every_committed_run_keeps_its_identity():
    """The committed studies' folders, resume and compare rows stay valid: each results file's
    recorded identity is what the declarations compute from its recorded config."""
    docs = committed_results()
    assert len(docs) >= 150
    changed = [
        d["identity"]["folder"]
        for d in docs
        if RunIdentity.from_config(d["config"]).to_dict() != d["identity"]
    ]
    assert not changed, changed[:5]


def test_an_added_option_at_its_off_value_leaves_old_runs_as_they_were():
    config = next(d["config"] for d in committed_results() if d["config"]["encoding"]["name"] == "rope")
    before = {
        **config,
        "encoding": {k: v for k, v in config["encoding"].items() if k not in ("p_rope", "remap")},
    }
    assert RunIdentity.from_config(before).digest == RunIdentity.from_config(config).digest
    turned_on = {**config, "encoding": {**config["encoding"], "p_rope": 0.75}}
    assert RunIdentity.from_config(turned_on).digest != RunIdentity.from_config(config).digest


@dataclass
class Base:
    OPTION_ROLE: ClassVar[Role] = Role(at_eval=True)
    name: str = "base"
    width: int = 4
    tests: List[int] = at_test(default_factory=lambda: [1, 2])
    log_every: int = execution(10)
    added: float = option(1.0, off=1.0)


@dataclass
class Child(Base):
    name: str = "child"
    tests: List[int] = field(default_factory=lambda: [3])  # a new default, no new role
    log_every: int = option(5)  # a role of its own


def test_a_field_takes_its_nearest_declaration_or_its_class_default():
    assert role_of(Child, "tests") == Role(experiment=False, at_eval=True)  # the base's, kept
    assert role_of(Child, "log_every") == Role()  # its own wins over the base's
    assert role_of(Base, "log_every") == Role(experiment=False)
    assert role_of(Child, "width") == Role(at_eval=True)  # the class default
    assert role_of(Child, "name") == Role()  # picks the schema: the experiment, never at evaluation
    assert role_of(Child, "added").added and not role_of(Child, "width").added


def test_two_schemas_of_one_group_may_not_disagree_on_a_key():
    with pytest.raises(TypeError, match="log_every"):
        roles([Base, Child])
    assert roles([Base])["added"].off == 1.0


@pytest.mark.parametrize("group", sorted(group_schemas()))
def test_every_group_s_schemas_agree_on_their_keys_roles(group):
    assert group_roles(group)  # roles() refuses a disagreement


def test_a_task_s_test_keys_are_neither_the_experiment_nor_refused_at_evaluation():
    task = group_roles("task")
    tested = {key for key, role in task.items() if not role.experiment}
    assert {"test_lengths", "test_examples", "test_seed", "decoding"} <= tested
    assert tested == {key for key, role in task.items() if role.at_eval}
    config = {
        "task": {"name": "copy", "train_lengths": [1, 40], **dict.fromkeys(tested, 0)},
        "train": {"seed": 0},
        "data": {"name": "shakespeare"},
    }
    assert experiment_config(config)["task"] == {"name": "copy", "train_lengths": [1, 40]}
    eval_overrides({"task": dict.fromkeys(tested, 0)})  # all accepted
    with pytest.raises(ValueError, match=r"cannot override task\.train_lengths: .* task\.test_lengths"):
        eval_overrides({"task": {"train_lengths": [1, 2]}})


def test_each_group_s_eval_overrides_follow_the_declared_roles():
    for group, refused in (
        ("model", "n_layers"),
        ("train", "lr"),
        ("encoding", "name"),
        ("encoding", "members"),
    ):
        assert not group_roles(group)[refused].at_eval
        with pytest.raises(ValueError, match=rf"cannot override {group}\.{refused}:"):
            eval_overrides({group: {refused: 1}})
    eval_overrides(
        {"model": {"attention": "sdpa"}, "train": {"precision": "bf16"}, "logger": {"name": "none"}}
    )
    eval_overrides({"encoding": {"base": 500.0, "scaling": {"kind": "yarn"}}})  # inference-time knobs
