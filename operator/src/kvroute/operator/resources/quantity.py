"""Resource quantities written the way the API server stores a container's resources.

The API server parses every quantity of a Deployment's containers (`resources.requests.cpu: 1000m`) and stores it
in canonical form (Kubernetes' `resource.Quantity`, rounded up to milli units as core/v1 resource lists are). A
manifest that says `1000m` would never compare equal to the live `1`, so every reconcile would apply it again (a
no-op for the server, a needless write for the operator). The operator therefore renders them canonically:

1. The number is rounded up (away from zero) to whole milli units: 12.5m -> 13m, 1n -> 1m.
2. It keeps the family of its suffix and takes the largest unit that leaves an integer mantissa:
   - decimal SI (none, m k M G T P E), units 1000^k: 1000m -> 1, 0.5 -> 500m, 1500 -> 1500, 2000 -> 2k;
   - binary SI (Ki Mi Gi Ti Pi Ei), units 1024^k: 1024Mi -> 1Gi, 0.5Gi -> 512Mi; a value below 1024 in magnitude
     or with a fraction is written in decimal SI instead: 0.5Ki -> 512, 0.1Ki -> 102400m; binary values are
     capped at 2^63-1 (written in decimal);
   - decimal exponent (1e3, 5E-3), units 10^3k written e<3k> (nothing for e0): 1e3 -> 1e3, 15e2 -> 1500.
3. Zero is `0`.

The server keeps some non-canonical spellings as given (`+1k`, `1.`, `5E-3`); for those the operator's first
apply rewrites the stored value once, and the next reconcile finds it equal. A decimal quantity beyond the units
(1000E and more) is returned as given.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Decimal, DecimalException, localcontext

_PRECISION = 120  # digits: room for 999E (21 digits) in milli units, and for any input the CRD's pattern admits
_MILLI = Decimal("1e-3")
_MAX_BINARY = Decimal(2**63 - 1)
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"": 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|([KMGTPE]i)|([numkMGTPE]))?")


def canonical(quantity: int | str) -> int | str:
    """`quantity` as the API server stores it (see the module docstring); unparseable input is returned as is."""
    match = _QUANTITY.fullmatch(str(quantity))
    if match is None:
        return quantity
    with localcontext(prec=_PRECISION):
        try:
            return _canonical(match, original=quantity)
        except DecimalException:
            return quantity


def value_of(quantity: int | str) -> Decimal | None:
    """The number `quantity` stands for (`1500m` -> 1.5, `2Ki` -> 2048); None when it does not parse."""
    match = _QUANTITY.fullmatch(str(quantity))
    if match is None:
        return None
    with localcontext(prec=_PRECISION):
        try:
            return _value(match)
        except DecimalException:
            return None


def _value(match: re.Match[str]) -> Decimal:
    number, exponent, binary, decimal = match.groups()
    value = Decimal(number)
    if exponent:
        return value.scaleb(int(exponent[1:]))
    if binary:
        return value * Decimal(2 ** _BINARY_SI[binary])
    return value.scaleb(_DECIMAL_SI[decimal or ""])


def _canonical(match: re.Match[str], original: int | str) -> int | str:
    binary = match.group(3)
    value = _value(match).quantize(_MILLI, rounding=ROUND_UP)
    if binary:
        value = max(min(value, _MAX_BINARY), -_MAX_BINARY)
    if value == 0:
        return "0"
    if binary and abs(value) >= 1024 and value == value.to_integral_value():
        return _binary(int(value))
    return _decimal(value, exponent_form=bool(match.group(2)), original=original)


def _binary(value: int) -> str:
    power = 0
    while value % 1024 == 0 and power < 60:
        value //= 1024
        power += 10
    suffix = next(s for s, p in _BINARY_SI.items() if p == power)
    return f"{value}{suffix}"


def _decimal(value: Decimal, *, exponent_form: bool, original: int | str) -> int | str:
    mantissa = int(value.scaleb(3))  # exact: the value is a whole number of milli units
    power = -3
    while mantissa % 1000 == 0:
        mantissa //= 1000
        power += 3
    if exponent_form:
        return f"{mantissa}e{power}" if power else str(mantissa)
    suffix = next((s for s, p in _DECIMAL_SI.items() if p == power), None)
    return original if suffix is None else f"{mantissa}{suffix}"
