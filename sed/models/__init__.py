"""SED models."""

from __future__ import annotations

from sed.models.crnn import CRNN, CRNNOutput

__all__ = ["CRNN", "CRNNOutput"]
