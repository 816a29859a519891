"""Offline evaluation: metrics (``metrics``), their goals for results tables (``specs``, torch-free)
and reconstruction grids (``grid``)."""
