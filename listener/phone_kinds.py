"""A phone number's type (mobile, fixed line, toll-free, ...) exactly as
`phonenumbers.number_type` gives it, in one regular-expression match instead of up to eleven.

`number_type` checks the number against its region's general pattern, then each type's
pattern in turn (premium rate, toll-free, shared cost, VoIP, personal, pager, UAN, voicemail,
fixed line, mobile), each only when the type allows the number's length, and the first that
matches names the type (a fixed line that matches the mobile pattern too is
FIXED_LINE_OR_MOBILE). Here the same patterns, for one country code and one length, are one
alternation in that order, behind a look-ahead for the general pattern: the first alternative
that matches the whole number is the first type `number_type` would find. Built from
phonenumbers' own metadata, once per country code and length; tests/unit/test_phone_kinds.py
compares both on every Brazilian area code and every region's example numbers.
"""

from __future__ import annotations

import re
from functools import cache

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType

_UNKNOWN = PhoneNumberType.UNKNOWN
_NON_GEO = phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY

# The types `number_type` tries before fixed lines and mobiles, in its order.
_SPECIAL = (
    ("premium_rate", PhoneNumberType.PREMIUM_RATE),
    ("toll_free", PhoneNumberType.TOLL_FREE),
    ("shared_cost", PhoneNumberType.SHARED_COST),
    ("voip", PhoneNumberType.VOIP),
    ("personal_number", PhoneNumberType.PERSONAL_NUMBER),
    ("pager", PhoneNumberType.PAGER),
    ("uan", PhoneNumberType.UAN),
    ("voicemail", PhoneNumberType.VOICEMAIL),
)

# What one country code and length needs: the alternation and, by the group number of each
# alternative, its type; None for the pattern when no number of that length has a type.
_Kinds = tuple[re.Pattern[str] | None, dict[int, int]]


def number_kind(country_code: int, national: str) -> int | None:
    """`phonenumbers.number_type` of the number with this country code and national
    significant number (ASCII digits, no leading zero), or None when this shortcut does not
    apply (a country code shared by several regions, or none's): ask `number_type` then."""
    kinds = _kinds(country_code, len(national))
    if kinds is None:
        return None
    pattern, types = kinds
    if pattern is None:
        return _UNKNOWN
    match = pattern.fullmatch(national)
    if match is None:
        return _UNKNOWN
    # The alternative that matched is the last group to close (a group inside it closes
    # before it does).
    return types[match.lastindex or 0]


def _tried(desc: phonenumbers.PhoneNumberDesc | None, length: int) -> str | None:
    """The pattern of `desc`, when `number_type` would try it on a number of `length` digits
    (it has one, and the length is one of its own when it names any), else None."""
    if desc is None or not desc.national_number_pattern:
        return None
    if desc.possible_length and length not in desc.possible_length:
        return None
    return f"(?:{desc.national_number_pattern})"


@cache
def _kinds(country_code: int, length: int) -> _Kinds | None:
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not regions or len(regions) != 1 or regions[0] == _NON_GEO:
        return None  # number_type picks the region by the number: not one metadata
    metadata = PhoneMetadata.metadata_for_region(regions[0])
    if metadata is None:
        return None
    general = _tried(metadata.general_desc, length)
    if general is None:
        return None, {}
    alternatives: list[tuple[str, int]] = []
    for name, kind in _SPECIAL:
        if (pattern := _tried(getattr(metadata, name), length)) is not None:
            alternatives.append((pattern, kind))
    fixed, mobile = _tried(metadata.fixed_line, length), _tried(metadata.mobile, length)
    same = metadata.same_mobile_and_fixed_line_pattern
    if fixed is not None:
        if same:
            alternatives.append((fixed, PhoneNumberType.FIXED_LINE_OR_MOBILE))
        else:
            if mobile is not None:  # a fixed line that is a mobile too
                alternatives.append(
                    (f"(?={mobile}\\Z){fixed}", PhoneNumberType.FIXED_LINE_OR_MOBILE)
                )
            alternatives.append((fixed, PhoneNumberType.FIXED_LINE))
    if not same and mobile is not None:
        alternatives.append((mobile, PhoneNumberType.MOBILE))
    if not alternatives:
        return None, {}
    # Each alternative is a group of its own; its number counts the groups before it (the
    # metadata's patterns have none today, but a group inside one would shift the rest).
    types: dict[int, int] = {}
    group = 1
    for text, kind in alternatives:
        types[group] = kind
        group += 1 + re.compile(text).groups
    union = "|".join(f"({text})" for text, _ in alternatives)
    return re.compile(f"(?={general}\\Z)(?:{union})"), types
