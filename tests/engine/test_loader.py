"""A broken feature never serves, and the error says where, what and how to fix it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from featurelm.engine import ContractError, Engine
from tests.conftest import SENTIMENT, ProjectFactory


def broken(**changes: Any) -> dict[str, Any]:
    feature = copy.deepcopy(SENTIMENT)
    for dotted, value in changes.items():
        node = feature
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return feature


def load_errors(make_project: ProjectFactory, **kwargs: Any) -> list[str]:
    with pytest.raises(ContractError) as caught:
        Engine.from_config(make_project(**kwargs))
    return [str(issue) for issue in caught.value.issues]


def test_valid_feature_loads(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    assert engine.registry.names() == ["sentiment"]


@pytest.mark.parametrize(("feature", "path", "words"), [
    (broken(unknown_key=1), "unknown_key", "Extra inputs are not permitted"),
    (broken(output__type="array"), "output.type", "must be \"object\""),
    (broken(output__properties__sentiment__type="strnig"), "output.properties.sentiment.type",
     "is not valid"),
    (broken(prompt__user="Review: {{ text "), "prompt.user", "syntax error"),
    (broken(prompt__user="Review: {{ body }}"), "prompt.user", "undeclared variable(s) body"),
    (broken(examples=[{"input": {"text": "x"}, "output": {"sentiment": "angry"}}]),
     "examples.0.output", "is not one of"),
    (broken(examples=[{"input": {"txt": "x"}, "output": {"sentiment": "negative"}}]),
     "examples.0.input", "'text' is a required property"),
    (broken(model__route="gpu"), "model.route", "unknown route 'gpu'"),
    (broken(name="other"), "name", "does not match the file name"),
    (broken(prompt={"user_file": "missing.j2"}), "prompt.user", "not found"),
    (broken(prompt={"user_file": "../../etc/passwd"}), "prompt.user", "inside prompts/"),
    (broken(input__properties__text__pattern="(a)\\1"), "input.properties.text", "not supported"),
    (broken(input__properties__text={"$ref": "https://evil.example/schema.json"}),
     "input.properties.text", "points outside the schema"),
])
def test_each_broken_feature_names_file_path_and_problem(
        make_project: ProjectFactory, feature: dict[str, Any], path: str, words: str) -> None:
    # Keep the file name "sentiment.yaml" even when the test renames the feature.
    feature_file = {"sentiment.yaml": __import__("yaml").safe_dump(feature)}
    errors = load_errors(make_project, features=[], raw_features=feature_file)
    assert any("sentiment.yaml" in e and path in e and words in e for e in errors), errors


def test_all_problems_are_reported_together(make_project: ProjectFactory) -> None:
    second = broken(name="second", prompt__user="{{ nope }}")
    errors = load_errors(make_project, features=[broken(model__route="gpu"), second])
    assert any("sentiment.yaml" in e and "unknown route" in e for e in errors)
    assert any("second.yaml" in e and "nope" in e for e in errors)


@pytest.mark.parametrize(("text", "words"), [
    ("name: [unclosed", "invalid YAML"),
    ("a: &x [1, 2]\nb: *x\n", "anchors"),
    ("name: !!python/object/apply:os.system ['true']\n", "custom YAML tags"),
    ("- just\n- a list\n", "must be a YAML mapping"),
])
def test_unsafe_or_malformed_yaml_is_refused(make_project: ProjectFactory, text: str,
                                             words: str) -> None:
    errors = load_errors(make_project, features=[], raw_features={"sentiment.yaml": text})
    assert any(words in e for e in errors), errors


def test_yaml_alias_bomb_is_refused_before_expansion(make_project: ProjectFactory) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    errors = load_errors(make_project, features=[], raw_features={"sentiment.yaml": bomb})
    assert any("not allowed" in e for e in errors), errors


def test_oversized_feature_file_is_refused(make_project: ProjectFactory) -> None:
    huge = "description: " + "x" * (300 * 1024) + "\n"
    errors = load_errors(make_project, features=[], raw_features={"sentiment.yaml": huge})
    assert any("byte limit" in e for e in errors), errors


def test_prompt_file_and_shared_macro_from_prompts_dir(make_project: ProjectFactory) -> None:
    feature = broken(prompt={"system": "{% from 'macros.j2' import quoted %}{{ quoted('x') }}",
                             "user_file": "user.j2"})
    config = make_project(
        features=[feature],
        prompts={"user.j2": "Review: {{ text }}",
                 "macros.j2": "{% macro quoted(v) %}<<{{ v }}>>{% endmacro %}"})
    engine = Engine.from_config(config)
    loaded = engine.registry.get("sentiment")
    assert loaded is not None
    messages = loaded.render_messages(engine.renderer, {"text": "great"})
    assert messages[0].content.startswith("<<x>>")
    assert messages[-1].content == "Review: great"
