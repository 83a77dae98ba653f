"""The policy file, ``allotment.yaml``: models, loading with line numbers, and checks."""

from allotment.config.loader import load_policy, parse_policy
from allotment.config.models import Policy

__all__ = ["Policy", "load_policy", "parse_policy"]
