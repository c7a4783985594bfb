"""Diagnosis: where each leaked tensor was born, what keeps it alive, why, and the fix.

``sites`` records allocation sites inside a short window, ``paths`` walks ``gc`` referrers and
autograd graphs to a named root, ``causes`` (pure) names the cause and writes the fix, and
``engine.diagnose`` runs the window and returns ranked :class:`~vramguard.analysis.suspects.Suspect`.
"""

from vramguard.diagnosis.causes import Cause, Evidence, RootKind, classify, write_fix
from vramguard.diagnosis.engine import diagnose

__all__ = ["Cause", "Evidence", "RootKind", "classify", "diagnose", "write_fix"]
