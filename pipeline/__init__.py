"""pseudolabel: open-vocabulary dense pseudo-labels with ResCLIP, at corpus scale on Ray."""

__version__ = "0.1.0"
