"""Task plugins (registered with ``@register_task``; built-ins declared as entry points)."""
