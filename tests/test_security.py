"""The execute view runs only what Cloud Tasks sent: forged requests are refused, nothing runs."""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks

from django_tasks_cloud_tasks import oidc
from tests import tasks
from tests.conftest import CloudTasks, backend_settings
from tests.tasks import recorder
from tests.test_execute_view import body, post
from tests.tokens import SERVICE_ACCOUNT, CertificateServer, SigningKey, google_claims, segment


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    return SigningKey("google-key-1")


@pytest.fixture
def google(google_key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[CertificateServer]:
    """Google's certificate endpoint, played by a local server publishing ``google_key``."""
    server = CertificateServer(google_key)
    monkeypatch.setattr(oidc, "GOOGLE_CERTS_URL", server.url)
    oidc.certificates.clear()
    yield server
    oidc.certificates.clear()
    server.close()


@pytest.fixture
def guarded(cloud_tasks: CloudTasks, monkeypatch: pytest.MonkeyPatch) -> CloudTasks:
    """A backend on Google Cloud (no emulator) whose view requires Cloud Tasks' ID tokens."""
    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST")
    cloud_tasks.configure(OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT, ALLOW_UNAUTHENTICATED=False)
    return cloud_tasks


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_valid_token_runs_the_task(
    guarded: CloudTasks, google: CertificateServer, google_key: SigningKey
) -> None:
    token = google_key.sign(google_claims(guarded.handler_host))

    response = post(guarded, body(), headers=bearer(token))

    assert response.status_code == 200
    assert [c.args for c in recorder.calls] == [(5, 3)]


def forged(key: SigningKey, audience: str, case: str) -> dict[str, str]:
    now = int(time.time())
    if case == "missing":
        return {}
    if case == "garbage":
        return bearer("not-a-token")
    if case == "basic-scheme":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if case == "unknown-key":
        return bearer(SigningKey(key.key_id).sign(google_claims(audience)))
    if case == "unknown-key-id":
        return bearer(key.sign(google_claims(audience), key_id="another-key"))
    if case == "expired":
        return bearer(key.sign(google_claims(audience, iat=now - 7200, exp=now - 3600)))
    if case == "not-yet-valid":
        return bearer(key.sign(google_claims(audience, iat=now + 600, exp=now + 4200)))
    if case == "no-expiry":
        return bearer(key.sign(google_claims(audience, exp=None)))
    if case == "wrong-issuer":
        return bearer(key.sign(google_claims(audience, iss="https://evil.example.com")))
    if case == "issuer-not-a-string":
        return bearer(key.sign(google_claims(audience, iss=["https://accounts.google.com"])))
    if case == "expiry-not-a-number":
        return bearer(key.sign(google_claims(audience, exp=str(now + 3600))))
    if case == "expiry-infinite":
        return bearer(key.sign(google_claims(audience, exp=float("inf"))))
    if case == "no-key-id":
        return bearer(key.sign_with_header({"alg": "RS256", "typ": "JWT"}, google_claims(audience)))
    if case == "algorithm-none":
        header = {"alg": "none", "kid": key.key_id, "typ": "JWT"}
        return bearer(f"{segment(header)}.{segment(google_claims(audience))}.")
    if case == "algorithm-hs256-keyed-with-the-certificate":
        # The key-confusion forgery: an HMAC whose secret is the public certificate.
        header = {"alg": "HS256", "kid": key.key_id, "typ": "JWT"}
        signed = f"{segment(header)}.{segment(google_claims(audience))}"
        mac = hmac.digest(key.certificate_pem.encode(), signed.encode(), "sha256")
        return bearer(f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}")
    if case == "tampered":
        header, _payload, signature = key.sign(google_claims(audience)).split(".")
        other = key.sign(google_claims(audience, email="attacker@evil.example.com"))
        return bearer(".".join([header, other.split(".")[1], signature]))
    if case == "wrong-audience":
        return bearer(key.sign(google_claims("https://other-service.example.com")))
    if case == "wrong-email":
        return bearer(
            key.sign(google_claims(audience, email="someone@else.iam.gserviceaccount.com"))
        )
    if case == "email-not-verified":
        return bearer(key.sign(google_claims(audience, email_verified=False)))
    if case == "email-verified-string":
        return bearer(key.sign(google_claims(audience, email_verified="true")))
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("missing", 401),
        ("garbage", 401),
        ("basic-scheme", 401),
        ("unknown-key", 401),
        ("unknown-key-id", 401),
        ("expired", 401),
        ("not-yet-valid", 401),
        ("no-expiry", 401),
        ("wrong-issuer", 401),
        ("issuer-not-a-string", 401),
        ("expiry-not-a-number", 401),
        ("expiry-infinite", 401),
        ("no-key-id", 401),
        ("algorithm-none", 401),
        ("algorithm-hs256-keyed-with-the-certificate", 401),
        ("tampered", 401),
        ("wrong-audience", 403),
        ("wrong-email", 403),
        ("email-not-verified", 403),
        ("email-verified-string", 403),
    ],
)
def test_forged_requests_are_refused_and_nothing_runs(
    guarded: CloudTasks,
    google: CertificateServer,
    google_key: SigningKey,
    case: str,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = forged(google_key, guarded.handler_host, case)

    response = post(guarded, body(), headers=headers)

    assert response.status_code == status
    assert response.json()["reason"]
    assert recorder.calls == []
    token = headers.get("Authorization", "").partition(" ")[2]
    for part in token.split("."):
        if len(part) > 8:
            assert part not in response.text
            assert part not in caplog.text


def test_the_handler_host_audience_is_refused_when_oidc_audience_differs(
    guarded: CloudTasks, google: CertificateServer, google_key: SigningKey
) -> None:
    guarded.configure(
        OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT,
        OIDC_AUDIENCE="https://tasks.example.com",
        ALLOW_UNAUTHENTICATED=False,
    )

    refused = post(
        guarded, body(), headers=bearer(google_key.sign(google_claims(guarded.handler_host)))
    )
    accepted = post(
        guarded, body(), headers=bearer(google_key.sign(google_claims("https://tasks.example.com")))
    )

    assert refused.status_code == 403
    assert accepted.status_code == 200
    assert len(recorder.calls) == 1


def test_certificates_are_fetched_once_for_many_requests(
    guarded: CloudTasks, google: CertificateServer, google_key: SigningKey
) -> None:
    token = google_key.sign(google_claims(guarded.handler_host))

    statuses = [post(guarded, body(), headers=bearer(token)).status_code for _ in range(25)]

    assert statuses == [200] * 25
    assert google.fetches == 1


def test_made_up_key_ids_do_not_make_every_request_fetch(
    guarded: CloudTasks, google: CertificateServer, google_key: SigningKey
) -> None:
    for i in range(10):
        token = google_key.sign(google_claims(guarded.handler_host), key_id=f"made-up-{i}")
        assert post(guarded, body(), headers=bearer(token)).status_code == 401

    assert google.fetches == 1


def test_unreachable_certificates_answer_503_and_nothing_runs(
    guarded: CloudTasks, google_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = CertificateServer(google_key)
    closed.close()  # Its port now refuses connections.
    monkeypatch.setattr(oidc, "GOOGLE_CERTS_URL", closed.url)
    oidc.certificates.clear()

    response = post(
        guarded, body(), headers=bearer(google_key.sign(google_claims(guarded.handler_host)))
    )

    assert response.status_code == 503
    assert "cannot be verified now" in response.json()["reason"]
    assert recorder.calls == []


def test_a_published_key_that_is_not_a_certificate_answers_503_and_nothing_runs(
    guarded: CloudTasks, google: CertificateServer, google_key: SigningKey
) -> None:
    google.extra_entries["broken-key"] = "-----BEGIN CERTIFICATE-----\nnot base64\n"

    response = post(
        guarded, body(), headers=bearer(google_key.sign(google_claims(guarded.handler_host)))
    )

    assert response.status_code == 503
    assert "'broken-key', which is not an RSA certificate" in response.json()["reason"]
    assert recorder.calls == []


def test_a_token_is_accepted_only_for_the_backend_whose_identity_it_carries(
    guarded: CloudTasks, google: CertificateServer, google_key: SigningKey
) -> None:
    reports_account = "reports@test-project.iam.gserviceaccount.com"
    guarded.settings.TASKS = {
        "default": backend_settings(
            guarded.handler_host, OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT
        ),
        "reports": backend_settings(
            guarded.handler_host,
            OIDC_SERVICE_ACCOUNT_EMAIL=reports_account,
            OIDC_AUDIENCE="https://reports.example.com",
        ),
    }
    token = google_key.sign(google_claims("https://reports.example.com", email=reports_account))

    wrong_backend = post(guarded, body(backend="default"), headers=bearer(token))
    right_backend = post(guarded, body(backend="reports"), headers=bearer(token))

    assert wrong_backend.status_code == 403
    assert right_backend.status_code == 200
    assert len(recorder.calls) == 1


@pytest.mark.parametrize(
    ("debug", "allow", "status"),
    [(False, False, 403), (True, False, 200), (False, True, 200)],
)
def test_without_authentication_the_view_runs_tasks_only_in_debug_or_when_opted_out(
    cloud_tasks: CloudTasks, debug: bool, allow: bool, status: int
) -> None:
    cloud_tasks.configure(ALLOW_UNAUTHENTICATED=allow)
    cloud_tasks.settings.DEBUG = debug

    response = post(cloud_tasks, body())

    assert response.status_code == status
    assert len(recorder.calls) == (1 if status == 200 else 0)
    if status == 403:
        assert "ALLOW_UNAUTHENTICATED" in response.json()["reason"]


def test_the_emulator_signs_tokens_the_backend_verifies(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT, ALLOW_UNAUTHENTICATED=False)

    tasks.add.enqueue(6, 7)

    assert recorder.wait_for(1)[0].args == (6, 7)
    assert cloud_tasks.emulator.wait_until_idle()
    (dispatch,) = cloud_tasks.emulator.dispatches
    assert dispatch.status == 200
    assert dispatch.headers["Authorization"].startswith("Bearer ")


def test_emulator_tokens_are_refused_when_the_backend_does_not_use_the_emulator(
    cloud_tasks: CloudTasks,
    google: CertificateServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cloud_tasks.configure(OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT, ALLOW_UNAUTHENTICATED=False)
    tasks.add.enqueue(1, 1)
    recorder.wait_for(1)
    assert cloud_tasks.emulator.wait_until_idle()
    emulator_token = cloud_tasks.emulator.dispatches[0].headers["Authorization"]
    recorder.clear()

    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST")
    cloud_tasks.configure(OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT, ALLOW_UNAUTHENTICATED=False)
    response = post(cloud_tasks, body(), headers={"Authorization": emulator_token})

    assert response.status_code == 401
    assert recorder.calls == []


def deploy_check_ids(settings: Any) -> set[str]:
    return {m.id for m in checks.run_checks(include_deployment_checks=True) if m.id}


def test_check_deploy_warns_when_the_view_would_refuse_everything(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(ALLOW_UNAUTHENTICATED=False)
    assert "django_tasks_cloud_tasks.W001" in deploy_check_ids(cloud_tasks.settings)

    cloud_tasks.configure(ALLOW_UNAUTHENTICATED=True)
    assert "django_tasks_cloud_tasks.W002" in deploy_check_ids(cloud_tasks.settings)

    cloud_tasks.configure(OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT, ALLOW_UNAUTHENTICATED=False)
    ids = deploy_check_ids(cloud_tasks.settings)
    assert not {"django_tasks_cloud_tasks.W001", "django_tasks_cloud_tasks.W002"} & ids


def test_check_reports_a_handler_path_that_does_not_reach_the_view(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(TASK_HANDLER_PATH="/elsewhere/")

    assert "django_tasks_cloud_tasks.E001" in deploy_check_ids(cloud_tasks.settings)
