"""metarl: Model-Agnostic Meta-Learning for policies (and any differentiable loss)."""

__version__ = "0.1.0"
