"""mezo_ray: MeZO fine-tuning as Ray Tune searches.

Kept free of imports so that ``import mezo_ray.report`` works without torch or Ray.
"""

__version__ = "0.1.0"
