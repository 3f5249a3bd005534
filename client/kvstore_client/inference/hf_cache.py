"""Passing a KV cache to a transformers model, and reading it back, across transformers versions.

transformers 5.24 renamed the models' ``past_key_values`` argument and output field to ``cache``
(the old name still works with a FutureWarning until 5.40). We support 5.16 (vLLM's floor, and the
GPU image's 5.17) through 5.25, so the name is read once per model class from its ``forward``
signature instead of being hard-coded either way.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any


@cache
def _cache_name(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model: Any, cache: Any, *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with ``cache`` passed under this transformers' name."""
    kwargs[_cache_name(type(model))] = cache
    return model(*args, **kwargs)


def cache_of(model: Any, output: Any) -> Any:
    """The cache a forward with ``use_cache=True`` returned."""
    return getattr(output, _cache_name(type(model)))
