"""Attacks: one module per attack family, each defining an ``AttackConfig`` subclass.

They are plug-ins named in ``harness.registry.ATTACKS`` and imported on first use."""
