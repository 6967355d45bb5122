"""Record and replay: cassettes keyed by what decides an answer, scrubbed of secrets, and a replay
that never calls a backend and names the case it has no recording for."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.types import CompletionRequest, Message
from featurelm.evals.cassettes import REDACTED, CassetteStore, request_key, scrub
from featurelm.evals.recording import Miss, MissingRecording, RecordingBackend, ReplayingBackend

REQUEST = CompletionRequest(
    messages=(Message("system", "Classify the ticket."), Message("user", "refund please")),
    output_schema={"type": "object"}, temperature=0.0, max_tokens=64, params={"seed": 7},
    cache_salt="tenant-salt", timeout=30.0, labels={"feature": "classify", "case": "refund"})


def test_the_key_ignores_salt_labels_and_timeout() -> None:
    key = request_key("gemma", REQUEST)
    same = replace(REQUEST, cache_salt="other", timeout=1.0,
                   labels={"feature": "classify", "case": "another", "tenant": "acme"})
    assert request_key("gemma", same) == key


def test_the_key_reads_equal_settings_as_equal() -> None:
    # A YAML `temperature: 0` is an int; the recorded run may have had 0.0.
    assert request_key("gemma", replace(REQUEST, temperature=0)) == request_key("gemma", REQUEST)


@pytest.mark.parametrize("change", [
    {"messages": (Message("system", "Classify the ticket!"), Message("user", "refund please"))},
    {"output_schema": {"type": "object", "required": ["category"]}},
    {"temperature": 0.5},
    {"max_tokens": 65},
    {"params": {"seed": 8}},
])
def test_the_key_changes_with_what_decides_the_answer(change: dict[str, object]) -> None:
    assert request_key("gemma", replace(REQUEST, **change)) != request_key(  # type: ignore[arg-type]
        "gemma", REQUEST)


def test_the_key_changes_with_the_model_not_the_backend_name() -> None:
    # Renaming a backend in featurelm.yaml changes nothing the model sees; a new model does.
    assert request_key("llama", REQUEST) != request_key("gemma", REQUEST)


@pytest.mark.parametrize("secret", [
    "sk-proj-abcdefghijklmnop1234",
    "flm_live_0123456789abcdef",
    "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "AKIAABCDEFGHIJKLMNOP",
])
def test_scrub_replaces_credentials_anywhere_in_a_document(secret: str) -> None:
    document = {"messages": [{"content": f"my key is {secret} thanks"}], f"k {secret}": 1}
    cleaned = json.dumps(scrub(document))
    assert secret not in cleaned
    assert REDACTED in cleaned
    assert "my key is" in cleaned


def test_scrub_leaves_ordinary_text_alone() -> None:
    text = "ask for a refund; task-based skills; flm is short for featurelm; bearer of news"
    assert scrub(text) == text


def model() -> ScriptedBackend:
    return ScriptedBackend(lambda request: '{"category": "billing"}', name="vllm",
                           model="gemma")


async def test_recorded_exchanges_replay_without_calling_the_backend(tmp_path: Path) -> None:
    live = model()
    store = CassetteStore(tmp_path, fresh=True)
    recorder = RecordingBackend.wrapper(store)(live)
    recorded = await recorder.complete(REQUEST)
    assert [p.name for p in store.save()] == ["classify.json"]

    silent = ScriptedBackend([], name="vllm", model="gemma")  # raises if ever called
    misses: list[Miss] = []
    replayer = ReplayingBackend.wrapper(CassetteStore(tmp_path), misses)(silent)
    assert (replayer.name, replayer.model) == ("vllm", "gemma")
    assert replayer.capabilities == silent.capabilities
    replayed = await replayer.complete(replace(REQUEST, cache_salt="another-tenant"))
    assert replayed == recorded
    assert silent.calls == 0 and misses == []


async def test_an_unrecorded_request_fails_naming_feature_and_case(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, fresh=True)
    await RecordingBackend(model(), store).complete(REQUEST)
    store.save()
    misses: list[Miss] = []
    replayer = ReplayingBackend(model(), CassetteStore(tmp_path), misses)
    changed = replace(REQUEST, messages=(Message("system", "Classify, briefly."),
                                         Message("user", "refund please")))
    with pytest.raises(MissingRecording) as caught:
        await replayer.complete(changed)
    assert "no recording for case 'refund' of feature 'classify'" in str(caught.value)
    assert f"--record {tmp_path}" in str(caught.value)
    assert not caught.value.retryable
    assert misses == [Miss("classify", "refund", "vllm", "gemma")]


async def test_repeated_requests_replay_in_the_order_they_were_recorded(
        tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, fresh=True)
    flaky = ScriptedBackend(['{"n": 1}', '{"n": 2}'], name="vllm", model="gemma")
    recorder = RecordingBackend(flaky, store)
    for _ in range(2):
        await recorder.complete(REQUEST)
    store.save()
    replayer = ReplayingBackend(model(), CassetteStore(tmp_path), [])
    texts = [(await replayer.complete(REQUEST)).text for _ in range(3)]
    assert texts == ['{"n": 1}', '{"n": 2}', '{"n": 2}']


async def test_cassettes_hold_no_secrets_salt_or_labels_beyond_the_case(tmp_path: Path) -> None:
    secret = "sk-live-abcdefghijklmnopqrstuvwxyz"
    store = CassetteStore(tmp_path, fresh=True)
    echo = ScriptedBackend(lambda request: f'{{"note": "saw {secret}"}}', name="vllm",
                           model="gemma")
    request = replace(REQUEST, messages=(Message("user", f"my key is {secret}"),),
                      labels={"feature": "classify", "case": "leak", "tenant": "acme"})
    await RecordingBackend(echo, store).complete(request)
    [path] = store.save()
    text = path.read_text()
    assert secret not in text
    assert "tenant-salt" not in text and "acme" not in text
    entry = next(iter(json.loads(text)["exchanges"].values()))
    assert entry["case"] == "leak"
    assert set(entry["request"]) == {"backend", "model", "messages", "output_schema",
                                     "temperature", "max_tokens", "params"}
    # The key is computed before scrubbing, so the scrubbed cassette still answers the request.
    replayed = await ReplayingBackend(model(), CassetteStore(tmp_path), []).complete(request)
    assert REDACTED in replayed.text


async def test_recording_again_replaces_a_feature_cassette(tmp_path: Path) -> None:
    for reply in ('{"v": "old"}', '{"v": "new"}'):
        store = CassetteStore(tmp_path, fresh=True)
        await RecordingBackend(ScriptedBackend([reply], name="vllm", model="gemma"),
                               store).complete(REQUEST)
        store.save()
    replayer = ReplayingBackend(model(), CassetteStore(tmp_path), [])
    assert (await replayer.complete(REQUEST)).text == '{"v": "new"}'
    assert [p.name for p in tmp_path.iterdir()] == ["classify.json"]  # no temp files left


def test_a_cassette_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "classify.json").write_text('{"format": 99, "exchanges": {}}')
    with pytest.raises(ValueError, match="unsupported cassette format 99"):
        CassetteStore(tmp_path).lookup("vllm", "gemma", REQUEST)
