"""HTTP feature endpoints: typed contracts in OpenAPI, problem+json errors, no stack traces."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from engine import Engine
from serving.app import create_app
from tests.conftest import SENTIMENT, ProjectFactory


@pytest.fixture
async def client(make_project: ProjectFactory) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Engine.from_config(make_project()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_feature_call_returns_output_and_meta(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/features/sentiment", json={"input": {"text": "great"}})
    assert response.status_code == 200
    assert response.json()["output"] == {"sentiment": "positive"}
    assert response.json()["meta"]["backend"] == "primary"


async def test_openapi_carries_each_features_own_schemas(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/features/sentiment"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert request["properties"]["input"] == SENTIMENT["input"]
    assert response["properties"]["output"] == SENTIMENT["output"]


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"input": {"text": 5}}, 422, "input"),
    ({"inputs": {}}, 422, "input"),
    ({"input": {"text": "x"}, "options": {"route": "nope"}}, 422, "input"),
])
async def test_bad_requests_get_problem_json(client: httpx.AsyncClient, body: object,
                                             status: int, kind: str) -> None:
    response = await client.post("/v1/features/sentiment", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith(kind)
    assert "Traceback" not in response.text


async def test_schema_errors_carry_json_paths(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/features/sentiment", json={"input": {"text": 5}})
    assert response.json()["errors"] == [{"path": "$.text", "message": "5 is not of type 'string'"}]


async def test_invalid_json_and_unknown_feature(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/features/sentiment", content=b"{nope",
                                 headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]
    response = await client.post("/v1/features/nope", json={"input": {}})
    assert response.status_code == 404


async def test_listing_and_contract(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/v1/features")).json()["features"]
    assert [f["name"] for f in listed] == ["sentiment"]
    contract = (await client.get("/v1/features/sentiment")).json()
    assert contract["output"] == SENTIMENT["output"]
    assert (await client.get("/v1/features/nope")).status_code == 404
