"""Spectral and feature math on plain tensors and closures: Hessian spectra (hessian.py), KFAC
(kfac.py), feature and Jacobian metrics (features.py), and two light modules strategies use,
torch and numpy only: the effective-rank formula (ranks.py) and ReDo's unit scores (units.py).
Imports no other part of pliable."""
