"""Phones as the back end stored them: parsed with `phonenumbers` in a default region."""

from __future__ import annotations

import pytest

from listener.errors import ConfigurationError
from listener.phones import (
    BadPhone,
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
