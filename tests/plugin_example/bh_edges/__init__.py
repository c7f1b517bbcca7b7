"""Example brainharness plugins (see this folder's pyproject.toml for the entry points)."""
