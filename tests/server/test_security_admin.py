"""What the API gives away and takes in outside inference (issue 12, items 10, 11, 14): the
docs, variant paths and errors, recipe names, feedback scores. Fast: no engine."""

from __future__ import annotations

import pytest

from server.variants.service import Variant
from tests.server.test_auth_limits import keyed_client, make_client

ADMIN = {"Authorization": "Bearer admin-secret"}
USER = {"Authorization": "Bearer k-1"}
DOCS = ("/docs", "/redoc", "/openapi.json")


# -- item 14: docs and variant details ----------------------------------------------------------


def test_docs_are_closed_when_api_keys_are_set(tmp_path):
    with keyed_client(tmp_path) as client:
        for path in DOCS:
            assert client.get(path).status_code == 404, path
            assert client.get(path, headers=USER).status_code == 404, path


def test_docs_are_open_on_an_open_gateway(tmp_path):
    with make_client(tmp_path) as client:
        for path in DOCS:
            assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(("keys", "enabled", "status"), [(True, True, 200), (False, False, 404)])
def test_docs_enabled_overrides_the_default(tmp_path, keys, enabled, status):
    factory = keyed_client if keys else make_client
    with factory(tmp_path, docs_enabled=enabled) as client:
        for path in DOCS:
            assert client.get(path).status_code == status, path


def _failed_variant(client) -> None:
    variants = client.app.state.leanserve.variants
    variants.variants["w8a8"] = Variant(
        "w8a8",
        "smollm2-135m-instruct:w8a8",
        "w8a8",
        state="failed",
        error="compress exited with code 1; see /srv/secret/home/logs/build-w8a8.log",
        path="/srv/secret/home/variants/abc/def",
        card={"base": {"name": "m", "path": "/srv/secret/models/base"}, "quality": {}},
    )


def test_variant_paths_and_errors_are_admin_only(tmp_path):
    with keyed_client(tmp_path) as client:
        _failed_variant(client)
        for path in ("/v1/variants", "/v1/variants/w8a8"):
            user = client.get(path, headers=USER)
            admin = client.get(path, headers=ADMIN)
            assert user.status_code == 200 and admin.status_code == 200
            assert "/srv/secret" not in user.text, path
            assert "/srv/secret" in admin.text, path
        shown = client.get("/v1/variants/w8a8", headers=USER).json()
        assert shown["state"] == "failed" and shown["error"] and shown["path"] is None


def test_an_open_gateway_shows_why_a_build_failed(tmp_path):
    # No keys at all (make serve): there is no one to hide the reason from.
    with make_client(tmp_path) as client:
        _failed_variant(client)
        shown = client.get("/v1/variants/w8a8").json()
        assert "/srv/secret" in shown["error"] and shown["path"]


# -- item 11: recipe names from the API ---------------------------------------------------------


@pytest.mark.parametrize("bad", ["w8a8\n", "config.yaml", "my-recipe.yml", "w8a8\n\n"])
def test_recipe_file_names_and_trailing_newlines_are_refused(tmp_path, bad):
    with make_client(tmp_path, auth={"admin_key": "admin-secret"}) as client:
        r = client.post("/v1/variants", json={"recipe": bad}, headers=ADMIN)
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == "invalid_recipe"
        assert client.app.state.leanserve.variants.variants == {}


# -- item 10: feedback scores -------------------------------------------------------------------


@pytest.mark.parametrize("score", [1e308, -1e308, 1e6 + 1])
def test_feedback_scores_are_bounded(tmp_path, score):
    with make_client(tmp_path) as client:
        r = client.post("/v1/feedback", json={"request_id": "r1", "score": score})
    assert r.status_code == 400 and r.json()["error"]["param"] == "score"


def test_feedback_scores_in_range_are_kept(tmp_path):
    with make_client(tmp_path) as client:
        r = client.post("/v1/feedback", json={"request_id": "r1", "score": -1e6})
    assert r.status_code == 200 and r.json()["attached"] is False


def test_the_feedback_bounds_reach_the_outcome_writer(tmp_path):
    limits = {"unattached_feedback_ttl_s": 5, "unattached_feedback_max": 7}
    with make_client(tmp_path, limits=limits) as client:
        store = client.app.state.leanserve.experiments.store
        assert (store.feedback_ttl_s, store.feedback_max_unattached) == (5, 7)
