"""billing.round_money (SQL, used by the set-based invoice run) agrees with pricing.round_money."""

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pricing.money import ROUNDING_MODES, round_money

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

amounts = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=6,
                      allow_nan=False, allow_infinity=False)
# halves and near-halves are where modes differ: x.xx5, x.xx50001, x.xx4999
edges = st.builds(lambda i, tail: Decimal(i) / 100 + Decimal(tail), st.integers(-10**6, 10**6),
                  st.sampled_from(["0.005", "-0.005", "0.0050001", "0.0049999", "0", "0.5"]))


@hsettings(max_examples=300, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])  # conn is stateless here
@given(amount=st.one_of(amounts, edges), mode=st.sampled_from(sorted(ROUNDING_MODES)),
       currency=st.sampled_from(["USD", "JPY", "KWD"]))
def test_sql_rounding_matches_the_pricing_engine(conn, amount, mode, currency):
    expected = round_money(amount, currency, mode).rounded
    scale = {"USD": 2, "JPY": 0, "KWD": 3}[currency]
    got = conn.execute("SELECT billing.round_money(%s, %s, %s)", (amount, scale, mode)).fetchone()[0]
    assert got == expected, (amount, mode, currency)
