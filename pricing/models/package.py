"""`package`: per started block of ``package_size`` units at ``package_price``.

P(Q) = ceil(Q / package_size) × package_price (P(0) = 0). Computed with integer division and
remainder, so it is exact for any decimal package size.
"""

from __future__ import annotations

from decimal import Decimal

from pricing.models.base import Line, PriceResult, check_quantity
from pricing.money import CTX, ZERO

_ONE = Decimal(1)


class PackageModel:
    kind = "package"
    __slots__ = ("package_size", "package_price")

    def __init__(self, package_size: Decimal, package_price: Decimal) -> None:
        if package_size <= ZERO:
            raise ValueError("package_size must be > 0")
        self.package_size = package_size
        self.package_price = package_price

    def packages(self, quantity: Decimal) -> Decimal:
        check_quantity(quantity)
        n, r = CTX.divmod(quantity, self.package_size)
        return CTX.add(n, _ONE) if r else n

    def amount(self, quantity: Decimal) -> Decimal:
        return CTX.multiply(self.packages(quantity), self.package_price)

    def raw_amount(self, quantity: Decimal) -> Decimal:
        n, r = CTX.divmod(quantity, self.package_size)
        if r:
            n = CTX.add(n, _ONE)
        return CTX.multiply(n, self.package_price)

    def breakdown(self, quantity: Decimal) -> PriceResult:
        n = self.packages(quantity)
        amt = CTX.multiply(n, self.package_price)
        line = Line(1, ZERO, None, quantity, self.package_price, amt, n, self.package_size)
        return PriceResult(quantity, amt, (line,))
