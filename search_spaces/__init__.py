"""The search spaces shipped with mezo_ray (YAML data; this file only makes them a package)."""
