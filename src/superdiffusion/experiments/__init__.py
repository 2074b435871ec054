"""Experiments: sweeps over datasets x methods x regimes x seeds, reports and figures."""
