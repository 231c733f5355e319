"""Evaluation: scoring a head's predictions (``metrics``: the one scorer and the one loop over a
model's heads), the reports and model cards written from them (``report``), and the accuracy check
of the inference numerics (``numerics_check``).
"""
