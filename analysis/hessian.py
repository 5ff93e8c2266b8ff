"""Moved to analysis/spectral/hessian.py; this name stays importable (the same module object)."""

import sys

from analysis.spectral import hessian

sys.modules[__name__] = hessian
