"""Model registry: compact reference CNNs and any torchvision classifier (`tv:<name>`)."""

from quantsearch.models.registry import count_params, create, list_models

__all__ = ["count_params", "create", "list_models"]
