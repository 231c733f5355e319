"""The label sets, defined once and carried into every artifact's ``labels.json``."""

from __future__ import annotations

#: The 36 target countries (ISO 3166-1 alpha-2), in the seed's order of audience size.
COUNTRIES: tuple[str, ...] = (
    "US", "BR", "IN", "ID", "TR", "JP", "MX", "GB", "DE", "IT", "FR", "ES",
    "PH", "AR", "KR", "CO", "RU", "CA", "TH", "VN", "EG", "MY", "SA", "PL",
    "UA", "PE", "AU", "CL", "NL", "NG", "ZA", "AE", "PT", "BE", "CH", "SE",
)  # fmt: skip

#: Every other country of the world.
OTHER = "OTHER"

#: Output label set of the geolocation head: the 36 countries then OTHER (index == output column).
GEO_LABELS: tuple[str, ...] = (*COUNTRIES, OTHER)

#: What a prediction says when no class clears its confidence threshold.
UNCERTAIN = "UNCERTAIN"

#: Personas used by the simulator and the category head.
CATEGORIES: tuple[str, ...] = (
    "fashion", "beauty", "travel", "food", "fitness", "music", "gaming", "parenting", "business",
)  # fmt: skip

_COUNTRY_SET = frozenset(COUNTRIES)


def to_geo_label(country: str) -> str:
    """Map any ISO alpha-2 code (or ``OTHER``) to its geolocation label.

    Args:
        country: an ISO 3166-1 alpha-2 code in any case, or ``"OTHER"``.

    Returns:
        The code itself for the 36 target countries, else ``"OTHER"``.
    """
    code = country.strip().upper()
    return code if code in _COUNTRY_SET else OTHER
