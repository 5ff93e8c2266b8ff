"""Moved to analysis/spectral/features.py; this name stays importable (the same module object)."""

import sys

from analysis.spectral import features

sys.modules[__name__] = features
