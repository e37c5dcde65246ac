"""ISO 4217 currencies the product knows, with their minor-unit exponents.

Money is always integer minor units; the exponent says how many of them make one unit
(CNY 2: 8500 is 85.00; JPY 0; KWD 3). A currency outside this table is refused at the
edge, so nothing downstream ever has to guess an exponent.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["EXPONENTS", "exponent", "is_known"]

EXPONENTS = MappingProxyType(
    {
        "AED": 2, "ARS": 2, "AUD": 2, "BDT": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2,
        "CLP": 0, "CNY": 2, "COP": 2, "CZK": 2, "DKK": 2, "EGP": 2, "EUR": 2, "GBP": 2,
        "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0,
        "KES": 2, "KRW": 0, "KWD": 3, "KZT": 2, "LKR": 2, "MAD": 2, "MXN": 2, "MYR": 2,
        "NGN": 2, "NOK": 2, "NZD": 2, "OMR": 3, "PEN": 2, "PHP": 2, "PKR": 2, "PLN": 2,
        "QAR": 2, "RON": 2, "RUB": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3,
        "TRY": 2, "TWD": 2, "UAH": 2, "UGX": 0, "USD": 2, "VND": 0, "XAF": 0, "XOF": 0,
        "ZAR": 2,
    }
)


def is_known(code: str) -> bool:
    return code in EXPONENTS


def exponent(code: str) -> int:
    """The number of decimal places of ``code``; KeyError for an unknown currency."""
    return EXPONENTS[code]
