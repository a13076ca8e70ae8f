"""Safety-depth evaluation and attack harness (Qi et al., ICLR 2025)."""

__version__ = "0.1.0"
