"""A multilingual Instagram-profile simulator built on real gazetteer and language data.

Public API: ``SimulatorConfig``, ``Simulator``, ``simulate_profiles``, ``simulate_audience``,
``write_corpus``. See docs/SIMULATOR.md.
"""

from __future__ import annotations

from embedder.simulator.audience import simulate_audience
from embedder.simulator.config import SimulatorConfig
from embedder.simulator.core import Simulator, simulate_profiles
from embedder.simulator.writer import write_corpus

__all__ = ["Simulator", "SimulatorConfig", "simulate_audience", "simulate_profiles", "write_corpus"]
