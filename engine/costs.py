"""What one model call cost in USD: configured prices, or litellm's cost map for hosted models."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from featurelm.engine.config import BackendConfig
from featurelm.engine.types import Usage

_PER_MTOK = 1_000_000


def _litellm_prices(model: str) -> tuple[float, float] | None:
    # Only read the map if a hosted backend already loaded litellm; never import it for this.
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return None
    cost_map: Mapping[str, Mapping[str, Any]] = getattr(litellm, "model_cost", {})
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for key in candidates:
        entry = cost_map.get(key)
        if entry and "input_cost_per_token" in entry:
            return (float(entry.get("input_cost_per_token") or 0.0),
                    float(entry.get("output_cost_per_token") or 0.0))
    return None


def cost_usd(backend: BackendConfig, model: str, usage: Usage) -> float:
    """Configured per-million-token prices win; hosted models otherwise use litellm's map."""
    configured = backend.input_price_per_mtok or backend.output_price_per_mtok
    if not configured and backend.kind == "hosted":
        prices = _litellm_prices(model or backend.model)
        if prices is not None:
            return usage.prompt_tokens * prices[0] + usage.completion_tokens * prices[1]
    return (usage.prompt_tokens * backend.input_price_per_mtok
            + usage.completion_tokens * backend.output_price_per_mtok) / _PER_MTOK
