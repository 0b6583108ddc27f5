"""X-Twilio-Signature: the algorithm, checked against values computed here with hmac/hashlib
directly and against the worked example in Twilio's security documentation."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import ValidationError

from services.edge.config import TwilioConfig
from services.edge.twilio_auth import compute_signature, public_base_url, signature_is_valid, url_under

# Twilio's documented example (docs "Security", validating requests): auth token 12345, this URL
# and these POST parameters are signed as 0/KCTR6DLpKmkAf8muzZqo1nDgQ=.
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def reference_signature(token: str, data: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_the_documented_example():
    # Spelled out by hand: the URL, then each name and value in name order, no separators.
    data = (DOC_URL + "CallSid" + "CA1234567890ABCDE" + "Caller" + "+12349013030" + "Digits" + "1234"
            + "From" + "+12349013030" + "To" + "+18005551212")
    assert reference_signature(DOC_TOKEN, data) == DOC_SIGNATURE
    assert compute_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS.items()) == DOC_SIGNATURE
    # The order the form arrived in does not matter.
    assert compute_signature(DOC_TOKEN, DOC_URL, reversed(list(DOC_PARAMS.items()))) == DOC_SIGNATURE
    assert signature_is_valid(DOC_TOKEN, DOC_URL, DOC_PARAMS.items(), DOC_SIGNATURE)


def test_a_url_alone_for_websocket_upgrades():
    url = "wss://voice.example.com/v1/twilio/media"
    assert compute_signature("secret-token", url) == reference_signature("secret-token", url)
    assert signature_is_valid("secret-token", url, (), reference_signature("secret-token", url))


def test_sorting_is_case_sensitive_and_blank_and_repeated_values_count():
    params = [("b", "2"), ("B", ""), ("a", "y"), ("a", "x")]
    expected = reference_signature("t", "https://h/p" + "B" + "" + "a" + "x" + "a" + "y" + "b" + "2")
    assert compute_signature("t", "https://h/p", params) == expected
    assert not signature_is_valid("t", "https://h/p", [p for p in params if p[0] != "B"], expected)


@pytest.mark.parametrize("token, url, params, signature", [
    ("54321", DOC_URL, DOC_PARAMS, DOC_SIGNATURE),  # wrong auth token
    (DOC_TOKEN, DOC_URL, {**DOC_PARAMS, "Digits": "1235"}, DOC_SIGNATURE),  # tampered parameter
    (DOC_TOKEN, DOC_URL, {**DOC_PARAMS, "Extra": ""}, DOC_SIGNATURE),  # added parameter
    (DOC_TOKEN, DOC_URL, {k: v for k, v in DOC_PARAMS.items() if k != "To"}, DOC_SIGNATURE),  # dropped one
    (DOC_TOKEN, DOC_URL, DOC_PARAMS, None),  # no header
    (DOC_TOKEN, DOC_URL, DOC_PARAMS, ""),  # empty header
    (DOC_TOKEN, DOC_URL, DOC_PARAMS, DOC_SIGNATURE[:-2]),  # truncated
    ("", DOC_URL, DOC_PARAMS, DOC_SIGNATURE),  # no auth token configured: nothing is valid
    (DOC_TOKEN, DOC_URL.replace("https:", "http:"), DOC_PARAMS, DOC_SIGNATURE),  # URL mismatch: scheme
    (DOC_TOKEN, DOC_URL.replace("mycompany", "evil"), DOC_PARAMS, DOC_SIGNATURE),  # host
    (DOC_TOKEN, DOC_URL.replace("myapp", "other"), DOC_PARAMS, DOC_SIGNATURE),  # path
    (DOC_TOKEN, DOC_URL.replace("foo=1", "foo=2"), DOC_PARAMS, DOC_SIGNATURE),  # query
    (DOC_TOKEN, DOC_URL.replace(".com/", ".com:8443/"), DOC_PARAMS, DOC_SIGNATURE),  # another port
])
def test_refused(token, url, params, signature):
    assert not signature_is_valid(token, url, params.items(), signature)


def test_the_default_port_may_or_may_not_be_in_what_twilio_signed():
    with_port = "https://voice.example.com:443/v1/twilio/voice"
    without = "https://voice.example.com/v1/twilio/voice"
    assert signature_is_valid("t", without, (), reference_signature("t", with_port))
    assert signature_is_valid("t", with_port, (), reference_signature("t", without))
    ws = "wss://voice.example.com/v1/twilio/media"
    assert signature_is_valid("t", ws, (), reference_signature("t", "wss://voice.example.com:443/v1/twilio/media"))
    assert not signature_is_valid("t", ws, (), reference_signature("t", "wss://voice.example.com:80/v1/twilio/media"))


def test_the_public_url_replaces_what_the_edge_sees():
    headers = {"x-forwarded-proto": "http", "x-forwarded-host": "internal:8000"}
    base = public_base_url("https://voice.example.com/parley/", headers, "http://10.0.0.7:8000/v1/twilio/voice")
    assert base == "https://voice.example.com/parley"
    assert url_under(base, "/v1/twilio/voice", "a=1") == "https://voice.example.com/parley/v1/twilio/voice?a=1"
    assert url_under(base, "/v1/twilio/media", websocket=True) == "wss://voice.example.com/parley/v1/twilio/media"


def test_without_a_public_url_the_forwarded_headers_count():
    own = "http://10.0.0.7:8000/v1/twilio/voice"
    assert public_base_url("", {}, own) == "http://10.0.0.7:8000"
    forwarded = {"x-forwarded-proto": "HTTPS, http", "x-forwarded-host": "Voice.example.com"}
    assert public_base_url("", forwarded, own) == "https://Voice.example.com"
    assert url_under(public_base_url("", {"x-forwarded-proto": "https"}, own), "/m", websocket=True) == \
        "wss://10.0.0.7:8000/m"
    assert url_under("http://127.0.0.1:8000", "/m", websocket=True) == "ws://127.0.0.1:8000/m"


@pytest.mark.parametrize("public_url", ["voice.example.com", "ftp://voice.example.com",
                                        "https://voice.example.com/?a=1", "https://voice.example.com/#x", "https://"])
def test_a_public_url_must_be_an_http_base(public_url):
    with pytest.raises(ValidationError, match="public_url"):
        TwilioConfig(public_url=public_url)


def test_config_defaults_name_the_variable_not_the_value():
    config = TwilioConfig()
    assert config.auth_token_env == "TWILIO_AUTH_TOKEN" and config.require_signature is None
    with pytest.raises(ValidationError):
        TwilioConfig(stream_token_ttl_s=0)
    with pytest.raises(ValidationError):
        TwilioConfig(auth_token="x")  # there is no field for the secret itself
