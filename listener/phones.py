"""Phone numbers: the digits Evolution wants, the forms a stored number may take, and the
masked form that logs show.

Leads are often stored the way people write numbers in their own country: `(11) 98765-4321`,
`021 98765 4321`. Evolution wants the international digits (`5511987654321`), so a stored
number is parsed with `phonenumbers` in a default region (`LISTENER_DEFAULT_REGION`, `BR`):
a national number gains its country code, a trunk `0` is dropped, and a number that is not
valid for its region is refused with the reason.

A number already stored in international digits (`5511987654321`, the commonest form) skips
`phonenumbers.parse`, whose answer for it is known (see `_international_digits`), and its type
is one match of the region's patterns (`phone_kinds.number_kind`, what
`phonenumbers.number_type` answers); a number the shortcut does not answer takes the whole
check. A parsed number is remembered (`parse_phone`'s cache), since a lead's number is read
again for each of its messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from listener.phone_kinds import number_kind

# phonenumbers compiles a pattern of its metadata on each use unless told to keep them; the
# re module's own cache then does the work, at a lookup's cost each time (bounded: the
# metadata's patterns are fixed).
phonenumbers.enable_pattern_cache()

_NOT_DIGIT = re.compile(r"[^0-9]")  # ASCII digits only: Evolution wants 0-9
_DIGIT = re.compile(r"[0-9]")

_UNKNOWN = PhoneNumberType.UNKNOWN

#: Regions whose numbers are parsed when a stored one has no `+` (ISO 3166 alpha-2 codes).
DEFAULT_REGION = "BR"

_KIND = {
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE: "fixed line",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "mobile",
    PhoneNumberType.TOLL_FREE: "toll-free",
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
}


@dataclass(frozen=True, slots=True)
class Phone:
    """A stored number, parsed: its international digits (no `+`) and what kind of line."""

    digits: str
    kind: str  # "mobile", "fixed line", "toll-free", ... ("unknown" when the metadata cannot say)

    @property
    def fixed_line(self) -> bool:
        return self.kind == "fixed line"


class BadPhone(ValueError):
    """A stored number that cannot be sent to; the message says why, with the number masked."""


def valid_region(region: str) -> bool:
    """True for a region `phonenumbers` knows (`BR`, `PT`, `US`, ...)."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def parse_phone(raw: str | None, region: str = DEFAULT_REGION) -> Phone:
    """The number `raw` as Evolution wants it, or BadPhone with the reason.

    A number with `+` (or an international prefix) is read as international; any other is read
    in `region`, and, when that is not a valid number there, as international digits without
    their `+` (`5511987654321` stored bare)."""
    if raw is None:
        raise BadPhone("invalid phone number: the lead has none")
    answer = _parse_phone(raw, region)
    if isinstance(answer, str):
        raise BadPhone(answer)
    return answer


@lru_cache(maxsize=4096)
def _parse_phone(raw: str, region: str) -> Phone | str:
    """parse_phone's answer, or BadPhone's reason (a cache keeps answers, not exceptions)."""
    try:
        return _read_phone(raw, region)
    except BadPhone as exc:
        return str(exc)


def _read_phone(raw: str, region: str, *, shortcut: bool = True) -> Phone:
    text = raw.strip()
    if not text:
        raise BadPhone("invalid phone number: the lead has none")
    if not text.isascii() or _DIGIT.search(text) is None:
        raise BadPhone(f"invalid phone number {mask_phone_like(text)!r}: not a phone number")
    region = region.upper()
    if shortcut and (phone := _typed_international_digits(text, region)) is not None:
        return phone
    parsed = _international_digits(text, region) or _parse(text, region)
    if parsed is not None and (old := _without_ninth_digit(parsed)) is not None:
        return old
    # A number is valid exactly when it has a type (phonenumbers' is_valid_number matches the
    # same patterns number_type does): one match of the patterns, not two, per message.
    kind = _UNKNOWN if parsed is None else _number_type(parsed)
    if kind == _UNKNOWN:
        digits = _NOT_DIGIT.sub("", text)
        bare = _parse("+" + digits, None) if not text.startswith("+") else None
        bare_kind = _UNKNOWN if bare is None else _number_type(bare)
        if bare is not None and bare_kind != _UNKNOWN:
            parsed, kind = bare, bare_kind
        else:
            where = (
                f"for its country (+{parsed.country_code})"
                if parsed is not None and text.startswith("+")
                else f"for region {region}"
            )
            raise BadPhone(f"invalid phone number {mask_phone_like(text)!r}: not valid {where}")
        if (old := _without_ninth_digit(parsed)) is not None:
            return old
    assert parsed is not None  # a number with a type was parsed
    digits = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]
    return Phone(digits, _KIND.get(kind, "unknown"))


def _number_type(parsed: phonenumbers.PhoneNumber) -> int:
    """`phonenumbers.number_type`, in one match of the patterns where `number_kind` answers."""
    if not parsed.italian_leading_zero and parsed.country_code is not None:
        kind = number_kind(parsed.country_code, str(parsed.national_number))
        if kind is not None:
            return kind
    return phonenumbers.number_type(parsed)


def _typed_international_digits(text: str, region: str) -> Phone | None:
    """The whole answer for the commonest stored form, the region's international digits
    (`5511987654321`), when it is a valid number that is not an old Brazilian mobile: its
    digits are the text itself (the E.164 form of the country code and the national number
    `_international_digits` reads, without `+`) and its type is `number_kind`'s. None for any
    other text, or when the whole check must say (no type, a number the ninth-digit rule may
    take): `_read_phone` goes on as if this were not here."""
    form = _digits_form(region)
    if form is None or (national := _international_national(text, form)) is None:
        return None
    if form.code == "55" and len(national) == 10 and national[2] in "6789":
        return None  # see _without_ninth_digit
    kind = number_kind(int(form.code), national)
    if kind is None or kind == _UNKNOWN:
        return None
    return Phone(text, _KIND.get(kind, "unknown"))


def _without_ninth_digit(parsed: phonenumbers.PhoneNumber) -> Phone | None:
    """A Brazilian mobile stored the way it was written before 2016, without its ninth digit
    (`55 11 8765-4321`): not valid today, but WhatsApp still knows many accounts by it, so it
    is sent as stored (the ninth-digit forms of replies match it too)."""
    national = str(parsed.national_number)
    if parsed.country_code != 55 or len(national) != 10 or national[2] not in "6789":
        return None
    if phonenumbers.is_valid_number(parsed):
        return None
    with_nine = phonenumbers.PhoneNumber(
        country_code=55, national_number=int(national[:2] + "9" + national[2:])
    )
    if phonenumbers.number_type(with_nine) != PhoneNumberType.MOBILE:
        return None
    return Phone("55" + national, "mobile")


@dataclass(frozen=True, slots=True)
class _Digits:
    """What `_international_digits` needs of a region's metadata (see there)."""

    code: str  # the country code, `55`
    longest: int  # the most digits a national number of the region has
    idd: re.Pattern[str] | None  # the international prefix dialled from the region (`00..`)
    trunk: re.Pattern[str] | None  # the national prefix as parsing reads it (`0`, `90..`)


@cache
def _digits_form(region: str) -> _Digits | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.country_code is None:
        return None
    general = metadata.general_desc
    if phonenumbers.region_code_for_country_code(metadata.country_code) != region:
        return None  # a region that shares its code (CA with US): parse switches metadata
    if general is None or not general.possible_length or general.possible_length_local_only:
        return None
    idd, trunk = metadata.international_prefix, metadata.national_prefix_for_parsing
    return _Digits(
        str(metadata.country_code),
        max(general.possible_length),
        re.compile(idd) if idd else None,
        re.compile(trunk) if trunk else None,
    )


def _international_digits(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    """`phonenumbers.parse(text, region)` for text that is the region's international digits
    without `+` (`5511987654321` in BR), without parsing; None for any other text.

    Why it is the same answer, step by step through parse for such text (ASCII digits only,
    the region's country code first, more digits than any national number of the region, no
    international prefix at its start, no `0` and no national prefix after the code): no
    phone-context, extension or trailing text to take off; no `+` or international prefix, so
    the number is read from the default region; it starts with the region's code and is too
    long to be national, so the code is taken off; the national prefix does not match the rest,
    so nothing more is taken off; the region of the code is the region itself, so its metadata
    stays; no leading zero. What is left is the country code and the rest as an integer.
    tests/unit/test_phones.py compares both on every Brazilian area code and near misses."""
    form = _digits_form(region)
    if form is None or (national := _international_national(text, form)) is None:
        return None
    return phonenumbers.PhoneNumber(country_code=int(form.code), national_number=int(national))


def _international_national(text: str, form: _Digits) -> str | None:
    """The national number of `text` when it is the region's international digits (see
    `_international_digits`), else None."""
    if not (text.isascii() and text.isdigit() and text.startswith(form.code)):
        return None
    national = text[len(form.code) :]
    if len(text) <= form.longest or not 2 <= len(national) <= 17 or national[0] == "0":
        return None  # 2 to 17: the national numbers parse accepts
    if form.idd is not None and form.idd.match(text):
        return None
    if form.trunk is not None and form.trunk.match(national):
        return None
    return national


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def normalize_phone(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """The international digits of `raw` (`5511987654321`), or None when it is not a valid
    number (see parse_phone for the reason)."""
    try:
        return parse_phone(raw, region).digits
    except BadPhone:
        return None


def fixed_line_note(raw: str | None, region: str = DEFAULT_REGION) -> str:
    """` (a fixed line, not a mobile: most are not on WhatsApp)` when `raw` is a fixed line,
    else empty: appended to a failure's reason so the operator sees the likely cause."""
    try:
        phone = parse_phone(raw, region)
    except BadPhone:
        return ""
    return " (a fixed line, not a mobile: most are not on WhatsApp)" if phone.fixed_line else ""


def whatsapp_forms(digits: str) -> tuple[str, ...]:
    """International digits as WhatsApp may know them: Brazilian mobiles with and without the
    ninth digit (a JID may carry either)."""
    if not digits:
        return ()
    forms = [digits]
    if digits.startswith("55"):
        if len(digits) == 13 and digits[4] == "9":
            forms.append(digits[:4] + digits[5:])
        elif len(digits) == 12 and digits[4] in "6789":
            forms.append(digits[:4] + "9" + digits[4:])
    return tuple(forms)


def stored_forms(digits: str, region: str = DEFAULT_REGION) -> tuple[str, ...]:
    """The digits a lead's stored phone may have when WhatsApp knows it as `digits`: every
    WhatsApp form, and, for a number of the default region's country, its national forms too
    (`11987654321`; with a trunk `0`: `011987654321`; with a carrier selection code:
    `01511987654321`; `55011987654321`), since leads are stored as people write them: every
    form `parse_phone` reads as this number. Replies are matched on these."""
    forms = list(whatsapp_forms(digits))
    code = phonenumbers.country_code_for_region(region.upper())
    prefix = str(code)
    if code and digits.startswith(prefix):
        trunk = _trunk_prefix(region)
        for form in list(forms):
            national = form[len(prefix) :]
            if len(national) >= 8:
                forms.append(national)
                if trunk:
                    # `+55 (011) ...`: the country code and the trunk prefix both written.
                    forms.append(prefix + trunk + national)
                forms += [dialled + national for dialled in _dialling_prefixes(region.upper())]
    return tuple(dict.fromkeys(forms))


def _trunk_prefix(region: str) -> str:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region.upper())
    prefix = metadata.national_prefix if metadata is not None else None
    return prefix or ""


@cache
def _dialling_prefixes(region: str) -> tuple[str, ...]:
    """What the region's parse drops ahead of a national number: the trunk prefix, and the
    trunk prefix with a carrier selection code after it (Brazil's `0 15 11 ...`, `0 21 ...`),
    found by parsing the region's example number behind each candidate, once per region."""
    trunk = _trunk_prefix(region)
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    if not trunk or example is None:
        return (trunk,) if trunk else ()
    national = phonenumbers.national_significant_number(example)
    found = [trunk]
    for carrier in range(100):
        candidate = f"{trunk}{carrier:02d}"
        parsed = _parse(candidate + national, region)
        if (
            parsed is not None
            and parsed.country_code == example.country_code
            and phonenumbers.national_significant_number(parsed) == national
        ):
            found.append(candidate)
    return tuple(found)


def mask_phone(number: str) -> str:
    """Hide the middle of a phone number for log lines: `5511987654321` -> `55119*****321`."""
    size = len(number)
    if size >= 12:
        head, tail = 5, 3
    elif size >= 9:
        head, tail = 4, 3
    elif size >= 5:
        head, tail = 1, 2
    else:
        return "*" * size
    return number[:head] + "*" * (size - head - tail) + number[size - tail :]


def mask_stored(raw: str, region: str = DEFAULT_REGION) -> str:
    """A lead's phone as stored, masked as the logs mask it: the parsed number's international
    digits (`(11) 98765-4321` -> `55119*****321`), or, for a number that does not parse, its
    own digits."""
    return mask_phone(normalize_phone(raw, region) or _NOT_DIGIT.sub("", raw))


# Something that may be a phone number in any form a provider echoes it: digits with optional
# spaces, dashes, dots, parentheses and a leading +, as in `+55 (11) 98765-4321` or the JID
# `551187654321@s.whatsapp.net`, or glued to a word. Masked when it holds 8 digits or more;
# dates and IPv4 addresses are left alone.
_PHONE_LIKE = re.compile(
    r"(?<![\d*])"  # not the tail of a longer number, nor next to an already masked one
    r"(?!\d{4}-\d\d-\d\d)"  # a date
    r"(?!\d{1,3}(?:\.\d{1,3}){3}(?!\d))"  # an IPv4 address
    r"\+?\d[\d ().-]*\d(?![\d*])"
)
_LEAST_PHONE_DIGITS = 8


def _mask_match(match: re.Match[str]) -> str:
    digits = _NOT_DIGIT.sub("", match.group(0))
    return mask_phone(digits) if len(digits) >= _LEAST_PHONE_DIGITS else match.group(0)


def mask_phone_like(text: str) -> str:
    """`text` with anything that looks like a phone number masked (for logs and errors)."""
    return _PHONE_LIKE.sub(_mask_match, text)
