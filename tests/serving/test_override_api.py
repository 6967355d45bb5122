"""Overrides over HTTP as a tenant's tooling uses them: JSON uploads beside YAML ones, and the
per-feature override JSON Schema that editors and generated clients read."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import SENTIMENT
from tests.engine.test_sample_input import TICKET
from tests.serving.conftest import Client, ClientFactory

BASE = "/v1/tenants/acme/overrides/sentiment"
OVERRIDE: dict[str, Any] = {"prompt": {"system": "You read reviews for ACME."}}
CALL = {"input": {"text": "great"}}


@pytest.fixture
async def client(make_client: ClientFactory) -> Client:
    return await make_client(features=[
        {**SENTIMENT, "overridable": ["prompt.system", "model.temperature"]},
        {**SENTIMENT, "name": "locked"}])


def as_acme(client: Client) -> dict[str, str]:
    return client.keys.bearer("acme")


# -- JSON uploads -----------------------------------------------------------------------------

async def test_a_json_override_is_saved_as_the_same_yaml_and_serves(client: Client) -> None:
    saved = await client.http.put(BASE, json=OVERRIDE, headers=as_acme(client))
    assert saved.status_code == 201, saved.text
    assert saved.json()["version"] == 1 and saved.json()["active"] is True
    stored = await client.http.get(BASE + "/versions/1", headers=as_acme(client))
    assert yaml.safe_load(stored.json()["yaml_text"]) == OVERRIDE
    call = await client.http.post("/v1/features/sentiment", json=CALL, headers=as_acme(client))
    assert call.json()["meta"]["override_version"] == 1


async def test_json_and_yaml_uploads_of_one_override_diff_to_nothing(client: Client) -> None:
    as_yaml = yaml.safe_dump(OVERRIDE, sort_keys=False)
    first = await client.http.put(BASE, content=as_yaml,
                                  headers={**as_acme(client), "Content-Type": "application/yaml"})
    second = await client.http.put(BASE, json=OVERRIDE, headers=as_acme(client))
    assert (first.status_code, second.status_code) == (201, 201)
    diff = await client.http.get(BASE + "/diff", params={"from": 1, "to": 2},
                                 headers=as_acme(client))
    assert diff.json()["diff"] == ""


async def test_a_json_dry_run_renders_and_saves_nothing(client: Client) -> None:
    dry = await client.http.put(BASE, params={"dry_run": "true"}, json=OVERRIDE,
                                headers=as_acme(client))
    assert dry.status_code == 200 and dry.json()["version"] is None
    assert "ACME" in dry.json()["rendered"][0][0]["content"]
    assert (await client.http.get(BASE, headers=as_acme(client))).json()["versions"] == []


@pytest.mark.parametrize(("body", "detail"), [
    (b'{"prompt": {"system": "unclosed"', "not valid JSON"),
    (b'["prompt"]', "must be an object"),
    (b'"prompt: x"', "must be an object"),
    (b"\xff\xfe{}", "UTF-8"),
])
async def test_a_malformed_json_override_is_a_422_saying_why(client: Client, body: bytes,
                                                             detail: str) -> None:
    response = await client.http.put(
        BASE, content=body, headers={**as_acme(client), "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert (await client.http.get(BASE, headers=as_acme(client))).json()["versions"] == []


async def test_a_json_override_with_forbidden_keys_names_each_yaml_path(client: Client) -> None:
    response = await client.http.put(
        BASE, json={"output": {"type": "object"}, "model": {"route": "elsewhere"}},
        headers=as_acme(client))
    assert response.status_code == 422
    paths = {e["path"] for e in response.json()["errors"]}
    assert {"output.type", "model.route"} <= paths


async def test_a_template_that_breaks_only_on_the_sample_input_is_a_422(
        make_client: ClientFactory) -> None:
    client = await make_client(features=[TICKET])
    template = "{{ body }}{% if channel is defined %} via {{ channel.label }}{% endif %}"
    response = await client.http.put("/v1/tenants/acme/overrides/ticket",
                                     json={"prompt": {"user": template}},
                                     headers=as_acme(client))
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["path"] == "prompt"
    assert "for a sample input built from the input schema" in error["problem"]
    versions = await client.http.get("/v1/tenants/acme/overrides/ticket", headers=as_acme(client))
    assert versions.json()["versions"] == []


async def test_a_json_override_for_another_tenant_is_404(client: Client) -> None:
    response = await client.http.put("/v1/tenants/globex/overrides/sentiment", json=OVERRIDE,
                                     headers=as_acme(client))
    assert response.status_code == 404


# -- the override schema ----------------------------------------------------------------------

async def test_the_override_schema_lists_only_the_overridable_keys(client: Client) -> None:
    response = await client.http.get("/v1/features/sentiment/override-schema",
                                     headers=as_acme(client))
    assert response.status_code == 200
    schema = response.json()
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    assert validator.is_valid(OVERRIDE)
    assert validator.is_valid({"model": {"temperature": 0.2}})
    assert not validator.is_valid({"model": {"temperature": "hot"}})
    assert not validator.is_valid({"output": {"type": "object"}})
    assert not validator.is_valid({"model": {"route": "elsewhere"}})


async def test_a_feature_with_nothing_overridable_has_a_schema_that_allows_nothing(
        client: Client) -> None:
    response = await client.http.get("/v1/features/locked/override-schema",
                                     headers=as_acme(client))
    assert response.status_code == 200
    validator = Draft202012Validator(response.json())
    assert not validator.is_valid(OVERRIDE)


@pytest.mark.parametrize("who", ["acme", "admin"])
async def test_any_key_that_can_call_the_feature_reads_its_override_schema(
        client: Client, who: str) -> None:
    response = await client.http.get("/v1/features/sentiment/override-schema",
                                     headers=client.keys.bearer(who))
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer flm_not-a-key"},
                                     {"Authorization": "Basic YWNtZTpzZWNyZXQ="}])
async def test_the_override_schema_needs_a_key(client: Client, headers: dict[str, str]) -> None:
    response = await client.http.get("/v1/features/sentiment/override-schema", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "properties" not in response.json()


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/features/nope/override-schema", 404),
    ("/v1/features/Not%20A%20Name/override-schema", 422),
])
async def test_an_unknown_feature_has_no_override_schema(client: Client, path: str,
                                                         status: int) -> None:
    response = await client.http.get(path, headers=as_acme(client))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_spec_names_the_upload_and_schema_bodies(client: Client) -> None:
    spec = (await client.http.get("/openapi.json")).json()
    upload = spec["paths"][BASE.replace("acme", "{tenant}").replace("sentiment", "{feature}")]
    content = upload["put"]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Override"}
    assert content["application/yaml"]["schema"] == {"type": "string", "format": "binary"}
    schema_op = spec["paths"]["/v1/features/{feature}/override-schema"]["get"]
    assert schema_op["operationId"] == "override_schema_of"
    assert schema_op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OverrideSchema"}
    assert schema_op["responses"]["422"]["content"] == {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}
