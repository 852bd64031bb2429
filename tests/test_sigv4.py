"""SigV4 (xds_server/extproc/sigv4.py) against botocore's own signer, AWS's published test vectors, and the shared
credentials file format."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from unittest import mock
from urllib.parse import quote, unquote

import botocore.auth  # type: ignore[import-untyped]
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.aws_credentials import parse_credentials_file
from xds_server.extproc.sigv4 import (
    AwsCredentials,
    canonical_query,
    canonical_uri,
    sign,
    signature_of,
    signing_key,
)

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token/with+odd=chars"
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0"


def wire(model_id: str) -> str:
    """A model id as our gateway puts it in the path: `/` escaped (ARNs), `:` left literal."""
    return quote(model_id, safe=":")


def botocore_headers(
    credentials: AwsCredentials,
    region: str,
    service: str,
    method: str,
    host: str,
    path: str,
    query: str,
    body: bytes,
    now: datetime,
) -> dict[str, str]:
    """What botocore's SigV4Auth sets on the same request, made at `now`: the request carries the headers we sign
    (host and the payload hash), and the signer reads its time from `request.context['timestamp']`."""
    url = f"https://{host}{path}" + (f"?{query}" if query else "")
    headers = {"host": host, "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    timestamp = now.astimezone(UTC).strftime(botocore.auth.SIGV4_TIMESTAMP)
    request.context["timestamp"] = timestamp
    auth = SigV4Auth(
        Credentials(credentials.access_key_id, credentials.secret_access_key, credentials.session_token),
        service,
        region,
    )
    request.headers["X-Amz-Date"] = timestamp
    if credentials.session_token is not None:
        request.headers["X-Amz-Security-Token"] = credentials.session_token
    assert auth.payload(request) == headers["X-Amz-Content-SHA256"]  # botocore hashes the body the same way
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    answer = {
        "authorization": f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, SignedHeaders={signed}, "
        f"Signature={signature}",
        "x-amz-date": timestamp,
        "x-amz-content-sha256": headers["X-Amz-Content-SHA256"],
    }
    if credentials.session_token is not None:
        answer["x-amz-security-token"] = credentials.session_token
    return answer


# Random requests, signed by us and by botocore.

KEY_IDS = st.from_regex(r"\A(AKIA|ASIA)[A-Z2-7]{16}\Z")
SECRETS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
TOKENS = st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=200)
FOUNDATION = st.builds(
    "{}.{}-v{}:{}".format,
    st.sampled_from(["anthropic", "amazon", "meta", "mistral", "us.anthropic", "eu.meta"]),
    st.from_regex(r"\A[a-z0-9-]{1,30}\Z"),
    st.integers(1, 3),
    st.integers(0, 9),
)
ARNS = st.builds(
    "arn:aws:bedrock:{}:{}:{}/{}".format,
    st.sampled_from(["us-east-1", "eu-west-3", "ap-northeast-1"]),
    st.from_regex(r"\A[0-9]{12}\Z"),
    st.sampled_from(["inference-profile", "application-inference-profile", "provisioned-model"]),
    FOUNDATION,
)
MODEL_IDS = st.one_of(st.just(SONNET), st.just(PROFILE_ARN), FOUNDATION, ARNS)
OPERATIONS = st.sampled_from(["converse", "converse-stream", "invoke", "invoke-with-response-stream"])
# Other paths, as a client would send them: each segment percent-encoded (some characters left literal), with
# dot segments and empty segments that the canonical URI normalizes away.
SEGMENTS = st.one_of(
    st.sampled_from(["", ".", ".."]),
    st.builds(quote, st.text(min_size=1, max_size=12), st.sampled_from(["", ":", ":@!$&'()*+,;=", "-_.~"])),
)
OTHER_PATHS = st.builds(
    lambda parts, slash: "/" + "/".join(parts) + slash, st.lists(SEGMENTS, max_size=6), st.sampled_from(["", "/"])
)
PATHS = st.one_of(st.builds("/model/{}/{}".format, MODEL_IDS.map(wire), OPERATIONS), OTHER_PATHS)
# Queries as sent on the wire: names and values encoded the canonical way, in any order, names repeating.
QUERY_TEXT = st.text(max_size=10).map(lambda text: quote(text, safe="-_.~"))
QUERIES = st.lists(st.tuples(QUERY_TEXT.filter(bool), QUERY_TEXT, st.booleans()), max_size=5).map(
    lambda pairs: "&".join(name if bare and not value else f"{name}={value}" for name, value, bare in pairs)
)
HOSTS = st.sampled_from(
    [
        "bedrock-runtime.us-east-1.amazonaws.com",
        "bedrock-runtime-fips.us-west-2.amazonaws.com",
        "vpce-0123-abcd.bedrock-runtime.eu-west-1.vpce.amazonaws.com",
        "127.0.0.1:8443",
        "[::1]:9000",
    ]
)
TIMES = st.datetimes(
    min_value=datetime(2015, 1, 1),
    max_value=datetime(2040, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]),
)


@settings(max_examples=400, deadline=None)
@given(
    key_id=KEY_IDS,
    secret=SECRETS,
    token=TOKENS,
    region=st.sampled_from(["us-east-1", "us-west-2", "eu-central-1", "ap-southeast-2"]),
    service=st.sampled_from(["bedrock", "execute-api"]),
    method=st.sampled_from(["POST", "GET", "post"]),
    host=HOSTS,
    path=PATHS,
    query=QUERIES,
    body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
    now=TIMES,
)
def test_signature_equals_botocores(
    key_id: str,
    secret: str,
    token: str | None,
    region: str,
    service: str,
    method: str,
    host: str,
    path: str,
    query: str,
    body: bytes,
    now: datetime,
) -> None:
    credentials = AwsCredentials(key_id, secret, token)
    ours = sign(credentials, region, service, method, host, path, query, body, now)
    assert [name for name, _ in ours] == [name.lower() for name, _ in ours]
    assert len({name for name, _ in ours}) == len(ours)
    assert dict(ours) == botocore_headers(credentials, region, service, method, host, path, query, body, now)


@settings(max_examples=200, deadline=None)
@given(query=st.text(st.characters(codec="utf-8", exclude_characters="#"), max_size=40))
def test_any_query_is_decoded_then_encoded_as_botocore_encodes_parameters(query: str) -> None:
    """A query in any spelling (lowercase escapes, literal `:`, `/`, `+`, non-ASCII) is signed as botocore signs
    the parameters it decodes to: AWS decodes what it receives and encodes it canonically."""
    pairs = [tuple(unquote(part) for part in item.partition("=")[::2]) for item in query.split("&")] if query else []
    request = AWSRequest(method="GET", url="https://example.amazonaws.com/", params=pairs)
    assert canonical_query(query) == SigV4Auth(None, "s", "r").canonical_query_string(request)


def test_model_ids_are_encoded_again_in_the_canonical_uri() -> None:
    """`:` travels literal and is signed as %3A; an ARN's `/` travels as %2F and is signed as %252F."""
    assert wire(PROFILE_ARN).count("%2F") == 1
    assert canonical_uri(f"/model/{wire(SONNET)}/converse") == (
        "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
    )
    assert canonical_uri(f"/model/{wire(PROFILE_ARN)}/converse-stream") == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%252F"
        "us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    )
    assert canonical_uri("") == "/"
    assert canonical_uri("/a/./b/../c//d/") == "/a/c/d/"


def test_whole_headers_match_botocores_add_auth_at_a_frozen_time() -> None:
    """botocore's add_auth reads the clock through botocore.auth.get_current_datetime: frozen there, the headers it
    adds are ours, session token included."""
    now = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
    credentials = AwsCredentials("ASIAEXAMPLEEXAMPLE12", SECRET, TOKEN)
    host, path, body = "bedrock-runtime.us-east-1.amazonaws.com", f"/model/{wire(PROFILE_ARN)}/converse", b'{"a":1}'
    ours = dict(sign(credentials, "us-east-1", "bedrock", "POST", host, path, "", body, now))
    request = AWSRequest(
        method="POST",
        url=f"https://{host}{path}",
        data=body,
        headers={"host": host, "X-Amz-Content-SHA256": ours["x-amz-content-sha256"]},
    )
    auth = SigV4Auth(Credentials("ASIAEXAMPLEEXAMPLE12", SECRET, TOKEN), "bedrock", "us-east-1")
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=now.replace(tzinfo=None)):
        auth.add_auth(request)
    theirs = {name.lower(): value for name, value in request.headers.items() if name.lower() != "host"}
    assert theirs == ours
    assert ours["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE12/20250314/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
    )
    assert ours["x-amz-date"] == "20250314T150926Z"


def test_without_a_session_token_no_token_is_signed_or_set() -> None:
    headers = dict(
        sign(
            AwsCredentials("AKIDEXAMPLE", SECRET),
            "us-east-1",
            "bedrock",
            "POST",
            "h",
            "/",
            "",
            b"",
            datetime(2025, 1, 1, tzinfo=UTC),
        )
    )
    assert set(headers) == {"authorization", "x-amz-date", "x-amz-content-sha256"}
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in headers["authorization"]
    assert headers["x-amz-content-sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_time_is_signed_in_utc_and_must_carry_a_zone() -> None:
    credentials = AwsCredentials("AKIDEXAMPLE", SECRET)
    utc = datetime(2025, 1, 1, 0, 30, tzinfo=UTC)
    local = utc.astimezone(timezone(timedelta(hours=-8)))  # still Dec 31 there: the scope's date is UTC's
    assert sign(credentials, "r", "s", "GET", "h", "/", "", b"", local) == sign(
        credentials, "r", "s", "GET", "h", "/", "", b"", utc
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(credentials, "r", "s", "GET", "h", "/", "", b"", datetime(2025, 1, 1))


# AWS's published SigV4 test suite (aws-sig-v4-test-suite: example.amazonaws.com, region us-east-1, service
# "service", 20150830T123600Z, credentials AKIDEXAMPLE), through our canonicalization and signature.

VECTOR_HEADERS = "host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("name", "method", "path", "query", "expected"),
    [
        ("get-vanilla", "GET", "/", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("post-vanilla", "POST", "/", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "get-vanilla-utf8-query",
            "GET",
            "/",
            "\u1234=bar",
            "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        ),
        ("get-utf8", "GET", "/\u1234", "", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
        (
            "normalize-path/get-relative-relative",
            "GET",
            "/example1/example2/../..",
            "",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "normalize-path/get-slashes",
            "GET",
            "//example//",
            "",
            "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
        ),
    ],
)
def test_aws_test_suite(name: str, method: str, path: str, query: str, expected: str) -> None:
    canonical = "\n".join(
        [method, canonical_uri(path), canonical_query(query), VECTOR_HEADERS, "host;x-amz-date", EMPTY_SHA256]
    )
    assert signature_of(canonical, SECRET, "20150830T123600Z", "us-east-1", "service") == expected


def test_signing_key_of_the_documentation() -> None:
    """The worked example of "Derive a signing key" (IAM, us-east-1, 20120215)."""
    key = signing_key(SECRET, "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


# Credentials: the shared credentials file, and secrets kept out of reprs.


def test_credentials_file_profiles() -> None:
    text = """
# a comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret/with+slash=and%percent

[temporary]
aws_access_key_id=ASIATEMP
aws_secret_access_key=tempsecret
aws_session_token = token//with==
region = eu-west-1

[profile legacy]
aws_access_key_id = AKIDLEGACY
aws_secret_access_key = legacysecret
aws_security_token = legacytoken
"""
    assert parse_credentials_file(text) == ("AKIDDEFAULT", "secret/with+slash=and%percent", None)
    assert parse_credentials_file(text, "temporary") == ("ASIATEMP", "tempsecret", "token//with==")
    assert parse_credentials_file(text, "legacy") == ("AKIDLEGACY", "legacysecret", "legacytoken")


@pytest.mark.parametrize(
    ("text", "profile", "message"),
    [
        ("[default]\naws_secret_access_key = s3cr3t\n", "default", "lacks aws_access_key_id"),
        ("[default]\naws_access_key_id = AKID\n", "default", "lacks aws_secret_access_key"),
        ("[default]\naws_access_key_id =\naws_secret_access_key = s3cr3t\n", "default", "lacks aws_access_key_id"),
        ("[default]\n", "default", "lacks aws_access_key_id and aws_secret_access_key"),
        ("[other]\naws_access_key_id = AKID\naws_secret_access_key = s3cr3t\n", "default", r"no \[default\] profile"),
        ("", "default", r"profiles found: none"),
        ("aws_secret_access_key = s3cr3t\n", "default", "line 1 comes before any"),
        ("[default]\naws_secret_access_key s3cr3t\n", "default", "line 2 is neither"),
        ("[default]\n[default]\n", "default", r"section \[default\] appears twice"),
        ("[default]\naws_secret_access_key = s3cr3t\naws_secret_access_key = s3cr3t\n", "default", "appears twice"),
    ],
)
def test_credentials_file_errors_name_what_is_wrong_but_no_value(text: str, profile: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_credentials_file(text, profile)
    assert "s3cr3t" not in str(caught.value)
    # No chained parser error either: its message would quote the line.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_repr_hides_the_secret_and_the_token() -> None:
    credentials = AwsCredentials("AKIDEXAMPLE", SECRET, TOKEN)
    for text in (repr(credentials), str(credentials), f"{credentials}", repr([credentials])):
        assert SECRET not in text and TOKEN not in text
        assert "AKIDEXAMPLE" in text
    assert "session_token=None" in repr(AwsCredentials("AKIDEXAMPLE", SECRET))
