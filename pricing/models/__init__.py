"""Pricing models, one per file, behind a small factory (like lago-api's ``charge_models/``).

``build_model(spec)`` turns a validated price spec (see :mod:`pricing.book`) into a model object
with ``amount(Q)`` (unrounded Decimal) and ``breakdown(Q)`` (amount + per-tier lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pricing.models.base import Line, PriceModel, PriceResult, delta_lines, diff_lines
from pricing.models.flat import FlatModel
from pricing.models.package import PackageModel
from pricing.models.tiered import TieredModel
from pricing.models.volume import VolumeModel

if TYPE_CHECKING:
    from pricing.book import PriceSpec

__all__ = [
    "FlatModel",
    "Line",
    "PackageModel",
    "PriceModel",
    "PriceResult",
    "TieredModel",
    "VolumeModel",
    "build_model",
    "delta_lines",
    "diff_lines",
]


def build_model(spec: PriceSpec) -> PriceModel:
    kind = spec.model
    if kind == "flat":
        return FlatModel(spec.unit_price)  # type: ignore[union-attr]
    if kind == "tiered":
        return TieredModel([(t.up_to, t.unit_price) for t in spec.tiers])  # type: ignore[union-attr]
    if kind == "volume":
        return VolumeModel([(t.up_to, t.unit_price) for t in spec.tiers])  # type: ignore[union-attr]
    if kind == "package":
        return PackageModel(spec.package_size, spec.package_price)  # type: ignore[union-attr]
    raise ValueError(f"unknown pricing model {kind!r}")  # pragma: no cover
