"""Loading blip2 checkpoints: from the Hugging Face cache without the network when they are there,
else from the hub when it is reachable, else one line that says how to provide them."""
from __future__ import annotations

from pathlib import Path

from brainharness.weights import offline_reason, unavailable


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "(HF_HOME)"


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The snapshot commit of the cached checkpoint (``None`` when not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("preprocessor_config.json", "config.json"):
        try:
            hit = try_to_load_from_cache(repo_id, name, revision=revision)
        except Exception:  # noqa: BLE001 - e.g. a malformed repo id
            return None
        if isinstance(hit, str) and "snapshots" in Path(hit).parts:
            parts = Path(hit).parts
            return parts[parts.index("snapshots") + 1]
    return None


def from_hub(loader, spec, how: str, **kw):
    """``loader(spec.id)`` from the cache; else from the hub when it is reachable; else one line
    (:class:`~brainharness.errors.WeightsUnavailable`, ending with ``how`` to provide the weights)."""
    ident, rev = spec.id, spec.revision
    try:
        return loader(ident, revision=rev, local_files_only=True, **kw)
    except Exception as cached_error:  # noqa: BLE001 - not in the cache (or unreadable there)
        reason = offline_reason()
        if reason:
            err = OSError(f"not in the Hugging Face cache {hub_cache_dir()} and {reason}")
            raise unavailable(f"blip2 {ident}", spec, err, how) from cached_error
    try:
        return loader(ident, revision=rev, **kw)
    except Exception as e:  # noqa: BLE001
        raise unavailable(f"blip2 {ident}", spec, e, how) from e
