"""Optuna sweeps over ridge α ranges and task hyper-parameters (see :mod:`brainharness.sweeps.study`)."""
