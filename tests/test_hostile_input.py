"""Thousands of generated requests and tokens: no 5xx, no crash, nothing run that is not a Task,
no token accepted that google-auth would refuse."""

from __future__ import annotations

import json
import logging
import re
import string
import sys
import time
from collections.abc import Iterator
from typing import Any

import google.auth.jwt
import pytest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django_tasks_cloud_tasks import oidc
from tests import examples
from tests.conftest import backend_settings
from tests.tasks import recorder
from tests.tokens import (
    SERVICE_ACCOUNT,
    CertificateServer,
    SigningKey,
    google_claims,
    segment,
)

# The local "Google" publishes this key, so tokens it signs pass the signature check and
# their claims, however hostile, reach the checks after it.
FUZZ_KEY = SigningKey("fuzz-key")

TASK_PATHS = [
    "tests.tasks.accepts_anything",
    "tests.tasks.not_a_task",
    "tests.tasks.NOT_A_TASK_EITHER",
    "tests.tasks.recorder",
    "tests.tasks",
    "tests.no_such_module.thing",
    "os.system",
    "builtins.eval",
    "subprocess.Popen",
    "antigravity.fly",
    "this.s",
    "django_tasks_cloud_tasks.views.execute",
]
FIELDS = [
    "task_id",
    "task_path",
    "args",
    "kwargs",
    "queue_name",
    "backend",
    "priority",
    "takes_context",
    "enqueued_at",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
plausible_fields = {
    "task_id": st.text(max_size=40) | st.just("abc-123") | json_values,
    "task_path": st.sampled_from(TASK_PATHS) | st.text(max_size=60) | json_values,
    "args": st.lists(json_values, max_size=4) | json_values,
    "kwargs": st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values,
    "queue_name": st.sampled_from(["default", "other", ""]) | json_values,
    "backend": st.sampled_from(["default", "guarded", "nope"]) | json_values,
    "priority": st.integers(-200, 200) | json_values,
    "takes_context": st.booleans() | json_values,
    "enqueued_at": st.sampled_from(["2024-01-01T00:00:00+00:00", "yesterday"]) | json_values,
}
documents = st.fixed_dictionaries({}, optional=plausible_fields).map(
    lambda d: json.dumps(d).encode()
)
bodies = documents | st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
CLAIM_NAMES = ["iss", "aud", "email", "email_verified", "iat", "exp"]
now = st.builds(lambda skew: int(time.time()) + skew, st.integers(-7200, 7200))
# Valid claims with a few of them changed or removed: mostly near-misses of a good token.
claims = st.builds(
    lambda valid, changed, removed: {
        name: value for name, value in {**valid, **changed}.items() if name not in removed
    },
    st.builds(google_claims, st.just("http://testserver")),
    st.dictionaries(st.sampled_from(CLAIM_NAMES), now | json_values, max_size=2),
    st.sets(st.sampled_from(CLAIM_NAMES), max_size=1),
)
jwt_headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "none", "HS256", "ES256"]) | json_values,
        "kid": st.just(FUZZ_KEY.key_id) | json_values,
    },
)
base64url_text = st.text(string.ascii_letters + string.digits + "-_=", max_size=40)
# Three segments of generated JSON with a made-up signature, or a few base64url segments.
unsigned_tokens = st.builds(
    lambda header, payload, signature: f"{segment(header)}.{segment(payload)}.{signature}",
    jwt_headers | json_values,
    claims | json_values,
    base64url_text,
) | st.lists(base64url_text, max_size=5).map(".".join)
# Well-formed tokens signed with the published key, carrying generated claims.
signed_tokens = claims.map(FUZZ_KEY.sign)
headers = st.fixed_dictionaries(
    {},
    optional={
        "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": header_text | st.sampled_from(["0", "3"]),
        "HTTP_X_CLOUDTASKS_TASKNAME": header_text,
        "HTTP_AUTHORIZATION": header_text
        | header_text.map(lambda t: f"Bearer {t}")
        | unsigned_tokens.map(lambda t: f"Bearer {t}"),
        "CONTENT_TYPE": st.sampled_from(["application/json", "text/plain", "", "multipart/x"]),
    },
)


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("django.request") and record.exc_info:
            self.records.append(record)


@pytest.fixture
def view_client(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The view with an open backend and one that requires tokens (from a local "Google")."""
    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST", raising=False)
    server = CertificateServer(FUZZ_KEY)
    monkeypatch.setattr(oidc, "GOOGLE_CERTS_URL", server.url)
    settings.TASKS = {
        "default": backend_settings("http://testserver", ALLOW_UNAUTHENTICATED=True),
        "guarded": backend_settings(
            "http://testserver", OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT
        ),
    }
    recorder.clear()
    counter = _ErrorCounter()
    logging.getLogger("django.request").addHandler(counter)
    imported_before = set(sys.modules)
    yield Client(raise_request_exception=False), counter
    logging.getLogger("django.request").removeHandler(counter)
    server.close()
    assert not {"antigravity", "this"} & (set(sys.modules) - imported_before)


@settings(
    max_examples=examples.full(10_000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, extra=headers)
def test_generated_requests_never_crash_or_run_a_non_task(
    view_client: Any, body: bytes, extra: dict[str, str]
) -> None:
    client, errors = view_client
    content_type = extra.pop("CONTENT_TYPE", "application/json")
    calls_before = len(recorder.calls)

    response = client.post("/cloudtasks/execute/", body, content_type=content_type, **extra)

    assert response.status_code < 500, response.content
    assert errors.records == []
    new_calls = recorder.calls[calls_before:]
    if response.status_code == 200:
        assert [call.name for call in new_calls] == ["accepts_anything"]
    else:
        assert new_calls == []


@pytest.fixture(scope="module")
def google_certificates() -> Iterator[None]:
    server = CertificateServer(FUZZ_KEY)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(oidc, "GOOGLE_CERTS_URL", server.url)
        oidc.certificates.clear()
        yield
    oidc.certificates.clear()
    server.close()


@settings(max_examples=examples.full(1_000), deadline=None)
@given(token=signed_tokens | unsigned_tokens)
def test_a_generated_token_is_accepted_only_if_google_auth_accepts_it_too(
    google_certificates: None, token: str
) -> None:
    try:
        claims = oidc.verify(token, oidc.google_issuer())
    except oidc.InvalidToken as refusal:
        # Counted by kind (the reason up to the first value it quotes) in Hypothesis' statistics.
        event(f"refused: {re.sub('[^a-z ].*', '', str(refusal)).strip()}")
        return
    event("accepted")
    # google-auth's own decoder is the reference: nothing it refuses may get through.
    reference = google.auth.jwt.decode(
        token,
        certs={FUZZ_KEY.key_id: FUZZ_KEY.certificate_pem},
        clock_skew_in_seconds=oidc.CLOCK_SKEW_SECONDS,
    )
    assert claims == reference
    assert claims["iss"] in oidc.GOOGLE_ISSUERS
