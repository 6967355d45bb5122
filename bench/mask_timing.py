"""Times the local backend's grammar mask against unconstrained decoding (row 7b).

Run as a script (by bench/grammar_rows.py), so that the installed featurelm is imported, not
the checkout: prints one JSON object with the mask's seconds and steps and the unconstrained
generations' seconds and tokens, all on the packaged model.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from schema_corpus import HARD_CASES  # this folder is first on a script's path

#: Schemas whose constrained generations are timed: free text, a small classifier contract
#: and the issue's hard cases.
MASKED: list[dict[str, Any]] = [
    {"type": "object", "required": ["summary", "tags"], "properties": {
        "summary": {"type": "string", "maxLength": 160},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}}}},
    {"type": "object", "additionalProperties": False, "required": ["sentiment"],
     "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}}},
    *(schema for schema in HARD_CASES.values() if schema.get("type") == "object"),
]


async def measure(calls: int) -> dict[str, float]:
    from featurelm.engine.backends.local import LocalLlamaBackend, LocalOptions
    from featurelm.engine.types import CompletionRequest, Message

    backend = LocalLlamaBackend("local", LocalOptions(n_ctx=1024))
    prompt = (Message("user", "Describe a chair in one sentence."),)
    try:
        await backend.complete(CompletionRequest(messages=prompt, max_tokens=8))  # warm up
        # Unconstrained: a plain text continuation (the chat turn may end at once).
        llm = backend._load()
        plain_s, plain_tokens = 0.0, 0
        for i in range(calls):
            started = time.perf_counter()
            done = llm.create_completion(f"Chapter {i + 1}. The history of the chair",
                                         max_tokens=48, temperature=0.0)
            plain_s += time.perf_counter() - started
            plain_tokens += done["usage"]["completion_tokens"]
        mask_s, steps = 0.0, 0
        for schema in MASKED[:max(calls, 1) * 2]:
            request = CompletionRequest(messages=prompt, output_schema=schema, max_tokens=48)
            await backend.complete(request)
            mask = backend.last_mask
            if mask is not None:
                mask_s += mask.mask_s
                steps += mask.steps
    finally:
        await backend.aclose()
    return {"mask_s": mask_s, "steps": steps, "plain_s": plain_s, "plain_tokens": plain_tokens}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 4))))
