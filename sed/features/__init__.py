"""The front-end: audio in, normalised log-mel features out (resampling, spectrogram and dB, the scaler)."""

from sed.features.frontend import FrontEnd
from sed.features.scaler import TorchScaler

__all__ = ["FrontEnd", "TorchScaler"]
