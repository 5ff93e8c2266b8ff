"""Moved to analysis/spectral/kfac.py; this name stays importable (the same module object)."""

import sys

from analysis.spectral import kfac

sys.modules[__name__] = kfac
