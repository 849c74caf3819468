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
    if spec.model == "flat":
        return FlatModel(spec.unit_price)
    if spec.model == "tiered":
        return TieredModel([(t.up_to, t.unit_price) for t in spec.tiers])
    if spec.model == "volume":
        return VolumeModel([(t.up_to, t.unit_price) for t in spec.tiers])
    if spec.model == "package":
        return PackageModel(spec.package_size, spec.package_price)
    raise ValueError(f"unknown pricing model {spec.model!r}")  # pragma: no cover
