"""Phones as the back end stored them: parsed with `phonenumbers` in a default region."""

from __future__ import annotations

import pytest

from listener.errors import ConfigurationError
from listener.phones import (
    BadPhone,
    Phone,
    fixed_line_note,
    mask_phone,
    normalize_phone,
    parse_phone,
    stored_forms,
    whatsapp_forms,
)
from listener.settings import provider_free


@pytest.mark.parametrize(
    ("raw", "digits", "kind"),
    [
        ("(11) 98765-4321", "5511987654321", "mobile"),
        ("11 3456-7890", "551134567890", "fixed line"),
        ("021 98765 4321", "5521987654321", "mobile"),  # the trunk 0 is dropped
        ("+55 11 98765-4321", "5511987654321", "mobile"),
        ("5511987654321", "5511987654321", "mobile"),  # international digits stored bare
        ("+1 415 555 2671", "14155552671", "fixed line"),  # US numbers are either: not a mobile
        ("+351 912 345 678", "351912345678", "mobile"),
    ],
)
def test_national_numbers_gain_the_country_code(raw: str, digits: str, kind: str) -> None:
    phone = parse_phone(raw, "BR")
    assert phone.digits == digits
    assert phone.kind == kind or (raw.startswith("+1") and phone.kind in ("mobile", kind))


@pytest.mark.parametrize("raw", ["12-34", "(11) 1234-5678", "1" * 16, "abc"])
def test_a_number_not_valid_for_its_region_is_refused_with_the_reason(raw: str) -> None:
    with pytest.raises(BadPhone, match="invalid phone number"):
        parse_phone(raw, "BR")
    assert normalize_phone(raw) is None


def test_the_reason_masks_the_number_and_names_the_region() -> None:
    with pytest.raises(BadPhone) as info:
        parse_phone("(11) 1234-56789", "BR")
    assert "1234-56789" not in str(info.value)
    assert "region BR" in str(info.value)


def test_an_empty_phone_says_the_lead_has_none() -> None:
    with pytest.raises(BadPhone, match="has none"):
        parse_phone("  ", "BR")


def test_the_region_reads_national_numbers_of_its_own_country() -> None:
    assert parse_phone("912 345 678", "PT").digits == "351912345678"
    assert normalize_phone("912 345 678", "BR") is None


def test_a_fixed_line_is_named_in_a_failure_note() -> None:
    assert "fixed line" in fixed_line_note("11 3456-7890", "BR")
    assert fixed_line_note("(11) 98765-4321", "BR") == ""
    assert fixed_line_note("nonsense", "BR") == ""


def test_the_masked_form_follows_the_parsed_number() -> None:
    assert mask_phone(parse_phone("(11) 98765-4321").digits) == "55119*****321"


def test_brazilian_numbers_with_and_without_the_ninth_digit() -> None:
    assert whatsapp_forms("5511987654321") == ("5511987654321", "551187654321")
    assert whatsapp_forms("551187654321") == ("551187654321", "5511987654321")
    assert whatsapp_forms("551132654321") == ("551132654321",)  # a landline has no ninth digit
    assert whatsapp_forms("14155550100") == ("14155550100",)


def test_replies_match_leads_stored_in_national_form() -> None:
    forms = stored_forms("5511987654321", "BR")
    # WhatsApp's forms (with and without the ninth digit) come first, then the stored ones.
    assert forms[:2] == whatsapp_forms("5511987654321") == ("5511987654321", "551187654321")
    for stored in ("11987654321", "1187654321", "011987654321", "01187654321"):
        assert stored in forms
    # A number of another country has no national forms of the default region.
    assert stored_forms("14155550100", "BR") == ("14155550100",)


def test_an_unknown_region_is_a_bad_setting() -> None:
    assert provider_free(default_region="pt").default_region == "PT"
    with pytest.raises(ConfigurationError, match="default_region"):
        provider_free(default_region="XX")


def test_a_number_is_valid_exactly_when_it_has_a_type() -> None:
    """parse_phone asks phonenumbers for a number's type once and reads validity from it (no
    type: not valid), instead of matching the region's patterns twice per message. Checked on
    every region's example numbers of every type, each with its last digit changed, cut short
    and made longer, through regions that share a country code (+1, +44, +7) and non-geographic
    ones."""
    import phonenumbers
    from phonenumbers import PhoneNumberType

    seen = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(12):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = str(example.national_number)
            variants = {
                digits,
                digits[:-1] + str((int(digits[-1]) + 1) % 10),
                digits[:-1],
                digits + "7",
            }
            for national in variants:
                if not national:
                    continue
                number = phonenumbers.PhoneNumber(
                    country_code=example.country_code, national_number=int(national)
                )
                typed = phonenumbers.number_type(number) != PhoneNumberType.UNKNOWN
                assert typed == phonenumbers.is_valid_number(number), (region, kind, national)
                seen += 1
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            typed = phonenumbers.number_type(example) != PhoneNumberType.UNKNOWN
            assert typed == phonenumbers.is_valid_number(example)
            seen += 1
    assert seen > 5000


def _brazilian_digits() -> list[str]:
    """International digits as leads store them, and near misses: every two-digit area code
    (real or not) with mobiles (a ninth digit `9`, and old 8-digit ones), fixed lines (`2`-`5`
    first), and service-like numbers; each with a digit more or less; trunk and carrier prefixes
    after the code (`0`, `90`, `0 15`), an international prefix (`0055`, `0015`)."""
    numbers = []
    for area in range(10, 100):
        for first in range(10):
            for rest in ("87654321", "12345678", "00000000", "99999999"):
                numbers.append(f"55{area}{first}{rest}")  # 11 national digits
                numbers.append(f"55{area}{first}{rest[:-1]}")  # 10: fixed lines, old mobiles
                numbers.append(f"55{area}{first}{rest[:-2]}")  # 9
                numbers.append(f"55{area}{first}{rest}1")  # 12
    for national in ("11987654321", "1134567890", "40040000", "8001234567", "3003123456"):
        numbers += [
            "55" + national,
            "550" + national,
            "5590" + national,
            "55015" + national,
            "0055" + national,
            "0015" + national,
            "555" + national,
        ]
    return numbers


def test_international_digits_are_read_as_phonenumbers_parses_them() -> None:
    """The common form of a stored number (international digits without `+`) skips
    `phonenumbers.parse`: where the shortcut answers, parse gives the very same number (and does
    not refuse it). Checked on every Brazilian area code with mobiles, fixed lines and near
    misses, and on every region's example numbers of every type written as international
    digits (with a digit changed, cut short, made longer) read in their own region and in BR;
    the shortcut must answer for most of them."""
    import phonenumbers

    from listener.phones import _international_digits

    cases = [(digits, "BR") for digits in _brazilian_digits()] + _numbers_of_every_region()
    answered = 0
    for digits, region in cases:
        fast = _international_digits(digits, region)
        if fast is None:
            continue
        answered += 1
        assert fast == phonenumbers.parse(digits, region), (digits, region)
    assert answered > len(cases) // 3, (answered, len(cases))
    for text in ("+5511987654321", "(11) 98765-4321", "11987654321", "5511 98765-4321"):
        assert _international_digits(text, "BR") is None  # other forms are parsed


def test_a_number_read_again_gives_the_same_answer() -> None:
    """parse_phone remembers its answers, refusals included: a lead's number is parsed once
    per process, and the second reading is the first."""
    from listener.phones import _parse_phone

    first = parse_phone("(21) 98765-4320", "BR")
    hits = _parse_phone.cache_info().hits
    assert parse_phone("(21) 98765-4320", "BR") == first == Phone("5521987654320", "mobile")
    reasons = []
    for _ in range(2):
        with pytest.raises(BadPhone, match="not valid for region BR") as info:
            parse_phone("(11) 1234-5670", "BR")
        reasons.append(str(info.value))
    assert reasons[0] == reasons[1]
    assert _parse_phone.cache_info().hits == hits + 2


@pytest.mark.parametrize(
    "stored",
    [
        "(11) 98765-4321",
        "11 3456-7890",
        "021 98765 4321",
        "(011) 98765-4321",
        "0xx11 98765-4321",
        "0 15 11 98765-4321",  # a carrier selection code (15) after the trunk 0
        "021 21 2345-6789",  # carrier 21, fixed line in Rio
        "+55 (011) 98765-4321",  # the country code and the trunk 0 both written
        "+55 11 98765-4321",
        "5511987654321",
        "11 8765-4321",  # a mobile stored before its ninth digit
    ],
)
def test_a_reply_from_the_number_a_lead_was_sent_to_finds_the_lead(stored: str) -> None:
    """The same parse serves both sides: whatever form the parse sent a message to, a reply
    from that number (in each form WhatsApp may give it) is matched to the stored digits."""
    sent = parse_phone(stored, "BR").digits
    digits = "".join(ch for ch in stored if ch.isdigit())
    for jid in whatsapp_forms(sent):
        assert digits in stored_forms(jid, "BR"), (stored, jid)


def _numbers_of_every_region() -> list[tuple[str, str]]:
    """Every region's example numbers of every type as international digits, with a digit
    changed, cut short and made longer, each read in its own region, in BR and in US."""
    import phonenumbers

    cases = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(12):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            national = str(example.national_number)
            if example.italian_leading_zero:
                national = "0" * (example.number_of_leading_zeros or 1) + national
            for variant in (national, national[:-1], national + "7", national[:-1] + "0"):
                digits = f"{example.country_code}{variant}"
                cases += [(digits, region), (digits, "BR"), (digits, "US")]
    return cases


def test_a_numbers_type_is_the_type_phonenumbers_gives() -> None:
    """`number_kind` (one match of the region's patterns) answers what `number_type` (a match
    per type) answers: on every Brazilian area code with mobiles, fixed lines and near misses,
    and every region's example numbers of every type, changed, cut short and made longer.
    Where it does not answer (country codes several regions share) number_type is asked."""
    import phonenumbers

    from listener.phone_kinds import number_kind

    numbers = []
    for digits in _brazilian_digits():
        if not digits.startswith("0"):
            numbers.append(
                phonenumbers.PhoneNumber(country_code=55, national_number=int(digits[2:]))
            )
    for digits, region in _numbers_of_every_region():
        try:
            numbers.append(phonenumbers.parse(digits, region))
        except phonenumbers.NumberParseException:
            continue
    answered = typed = 0
    for number in numbers:
        if number.italian_leading_zero:
            continue
        kind = number_kind(number.country_code, str(number.national_number))
        if kind is None:
            continue
        answered += 1
        typed += kind != phonenumbers.PhoneNumberType.UNKNOWN
        assert kind == phonenumbers.number_type(number), number
    assert answered > len(numbers) * 3 // 4, (answered, len(numbers))
    assert typed > 4000
    assert number_kind(1, "4155552671") is None  # +1 is shared: number_type picks the region


def test_the_shortcut_gives_the_whole_checks_answer() -> None:
    """parse_phone's shortcut for international digits (no parse, the type in one match)
    answers exactly what the whole check answers, refusals included, on the same numbers."""
    from listener.phones import _read_phone, _typed_international_digits

    def read(text: str, region: str, shortcut: bool) -> Phone | str:
        try:
            return _read_phone(text, region, shortcut=shortcut)
        except BadPhone as exc:
            return str(exc)

    cases = [(digits, "BR") for digits in _brazilian_digits()] + _numbers_of_every_region()
    cases += [("(11) 98765-4321", "BR"), ("+55 11 3456-7890", "BR"), ("912 345 678", "PT")]
    taken = 0
    for text, region in cases:
        assert read(text, region, True) == read(text, region, False), (text, region)
        taken += _typed_international_digits(text, region) is not None
    assert taken > 2000, taken  # the shortcut answered (the rest went on to the whole check)
