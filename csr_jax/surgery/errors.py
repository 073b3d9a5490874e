"""The surgery's own error (rule problems raise :class:`csr_jax.policy.PolicyError`)."""

from csr_jax.policy import PolicyError

__all__ = ["SurgeryError"]


class SurgeryError(PolicyError):
    """A model or its variables do not fit the conversion (not a linen module, a bound module,
    variables of another model)."""
