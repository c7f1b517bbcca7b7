"""Backbone plugins. Each module registers its classes with ``@register_backbone``; the
built-ins are also declared as entry points so listing them imports nothing heavy."""
