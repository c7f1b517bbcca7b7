"""Dataset loaders (plugins): the built-in synthetic dataset and the real NSD layouts.

Each module registers one dataset through the ``brainharness.datasets`` entry points; the core
never imports this package.
"""
