"""Integration tests against a real Ray Serve on 127.0.0.1 (one start for the whole module, two replicas)."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from toy_artifact import make_artifact

from recsys.inference.recommend import Recommender
from serving.app import ServeArgs, api
from serving.runner import running

pytestmark = pytest.mark.serve

PORT = 18231
BASE = f"http://127.0.0.1:{PORT}"
TOKEN = "test-token"
REPLICAS = 2


def call(path, body=None, token=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{BASE}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    first = make_artifact(root, "v1")
    second = make_artifact(root, "v2", item_scale=2.0)
    # Half a CPU each, so that both replicas fit on a one-core CI runner too.
    args = ServeArgs(
        artifact=str(first),
        admin_token=TOKEN,
        max_k=50,
        max_batch_users=3,
        num_replicas=REPLICAS,
        num_cpus=0.5,
    )
    with running(args, port=PORT):
        yield {"first": first, "second": second}


def replica_versions():
    """Replica id -> the model version it serves, asking /health until every replica has answered."""
    seen = {}
    for _ in range(50):  # the router picks a replica at random: 50 tries miss one with odds 2**-49
        body = call("/health")[1]
        seen[body["replica"]] = body["model_version"]
        if len(seen) == REPLICAS:
            break
    return seen


def test_recommend_known_user_excludes_seen(service):
    status, body = call("/recommend/ann?k=4")
    assert status == 200
    assert [i["item_id"] for i in body["items"]] == [40, 30]
    assert body["model_version"] and body["fallback"] is None


def test_unknown_user_is_404_or_popular(service):
    status, body = call("/recommend/zed")
    assert status == 404 and body["unknown_ids"] == ["zed"] and "zed" in body["detail"]
    status, body = call("/recommend/zed?k=2&fallback=popular")
    assert status == 200 and body["fallback"] == "popular"
    assert [i["item_id"] for i in body["items"]] == [20, 10]


def test_batch_endpoint(service):
    status, body = call("/recommend", {"user_ids": ["ann", "bob"], "k": 2})
    assert status == 200
    assert [[i["item_id"] for i in r["items"]] for r in body["results"]] == [[40, 30], [30, 40]]
    status, body = call("/recommend", {"user_ids": ["ann", "zed"], "k": 2, "fallback": "popular"})
    assert status == 200 and body["unknown_user_ids"] == ["zed"]
    assert body["results"][1]["fallback"] == "popular"
    status, body = call("/recommend", {"user_ids": ["ann", "zed"]})
    assert status == 404 and body["unknown_ids"] == ["zed"]


def test_new_user_reports_unknown_items(service):
    status, body = call("/recommend/new-user", {"item_ids": [10, 30, 99], "k": 4})
    assert status == 200
    assert body["unknown_item_ids"] == [99]
    assert {i["item_id"] for i in body["items"]} == {20, 40}


def test_similar_health_model(service):
    status, body = call("/similar/10?k=1")
    assert status == 200 and [i["item_id"] for i in body["items"]] == [20]
    assert call("/similar/99")[0] == 404
    status, body = call("/health")
    assert status == 200 and body["status"] == "ok"
    status, body = call("/model")
    assert status == 200 and body["num_items"] == 4 and body["metrics"]["test"]["recall@20"] == 0.5


@pytest.mark.parametrize(
    ("path", "body", "raw", "status", "text"),
    [
        ("/recommend/ann?k=0", None, None, 422, "k must be between 1 and 50, got 0"),
        ("/recommend/ann?k=51", None, None, 422, "k must be between 1 and 50, got 51"),
        ("/recommend/ann?k=abc", None, None, 422, "int"),
        ("/recommend", None, b"{not json", 422, "JSON"),
        ("/recommend", {"user_ids": []}, None, 422, "at least 1"),
        ("/recommend", {"user_ids": ["ann", "bob", "cy", "ann"]}, None, 413, "at most 3 allowed"),
        ("/recommend/new-user", {"item_ids": [98, 99]}, None, 404, "unknown item id"),
        ("/recommend/new-user", {"items": [10]}, None, 422, "item_ids"),
    ],
)
def test_bad_requests_get_clear_4xx(service, path, body, raw, status, text):
    got, payload = call(path, body, raw=raw)
    assert got == status
    assert text in json.dumps(payload)


def test_admin_reload_needs_the_token(service):
    assert call("/admin/reload", {}, token="wrong")[0] == 401
    assert call("/admin/reload", {})[0] == 401
    # The token is checked before the body: a bad body without the token is still a 401.
    assert call("/admin/reload", {"artifact": 5}, token="wrong")[0] == 401
    assert call("/admin/reload", raw=b"{not json", token="wrong")[0] == 401
    status, body = call("/admin/reload", {"artifact": 5}, token=TOKEN)
    assert status == 422 and body["detail"][0]["loc"] == ["body", "artifact"]
    status, body = call("/admin/reload", {"artifact": "/no/such/dir"}, token=TOKEN)
    assert status == 422 and "no such artifact directory" in body["detail"]


# The app's own schema, built at import (schemathesis' lazy `from_fixture` loader does not run on pytest 9);
# the first test checks that the service serves this very schema.
api_schema = schemathesis.openapi.from_dict(api.openapi())


def test_the_service_serves_the_schema_under_test(service):
    status, served = call("/openapi.json")
    local = api.openapi()
    # Same operations and models. (Serve's copy of the app adds `"example": {}` to query parameters.)
    assert status == 200 and served["paths"].keys() == local["paths"].keys()
    assert served["components"] == local["components"]


@api_schema.parametrize()
@settings(
    max_examples=50,
    derandomize=True,  # a fixed seed: the same requests on every run
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_the_schema_allows_gets_a_5xx(service, case):
    """Property-based: whatever the OpenAPI schema lets a client send, the answer is never a server error."""
    if case.operation.path == "/admin/reload" and case.method.upper() == "POST":  # not a wrong-method case
        # The generated Authorization header is never the token: refused before the body is even read.
        response = case.call(base_url=BASE)
        assert response.status_code == 401, response.text
        case.call_and_validate(
            base_url=BASE, headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error]
        )
    else:
        case.call_and_validate(base_url=BASE, checks=[not_a_server_error])


def test_reload_reaches_every_replica_under_load(service):
    before = replica_versions()
    assert len(before) == REPLICAS and len(set(before.values())) == 1
    failures, answers = [], []

    def load():
        for _ in range(60):  # bounded: before, during and after the reload
            status, body = call("/recommend/bob?k=2")
            (answers if status == 200 else failures).append(body)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(1000):  # bounded wait until the load runs
        if len(answers) >= 20:
            break
        time.sleep(0.01)
    status, body = call("/admin/reload", {"artifact": str(service["second"])}, token=TOKEN)
    for t in threads:
        t.join(timeout=60)
    new = body["model_version"]
    assert status == 200 and new != next(iter(before.values()))
    assert not failures and len(answers) == 240
    assert {a["model_version"] for a in answers} == {*before.values(), new}
    # One reload call switched every replica: each answers with the new version right away.
    assert replica_versions() == dict.fromkeys(before, new)
    # The second artifact doubles every item score.
    score = call("/recommend/bob?k=1")[1]["items"][0]["score"]
    assert score == pytest.approx(4.0)  # item 30: (0, 2) x 2, dot (0, 1)


@pytest.mark.parametrize(
    ("kind", "options"), [("exact", None), ("ivf", {"nprobe": 3}), ("hnsw", {"ef_search": 7})]
)
def test_serve_args_load_the_chosen_retrieval(tmp_path, kind, options):
    args = ServeArgs(artifact="unused", retrieval=kind, retrieval_nprobe=3, retrieval_ef_search=7)
    rec = args.load(str(make_artifact(tmp_path, "v1")))
    assert rec.retrieval == kind and (rec.index is None) == (kind == "exact")
    if kind == "ivf":
        assert rec.index.index.nprobe == 1  # clipped to the cells of a tiny catalogue
    if kind == "hnsw":
        assert rec.index.index.hnsw.efSearch == 7
    exact = Recommender.from_artifact(make_artifact(tmp_path, "v1-exact"))
    assert [r.items for r in rec.recommend(["ann", "bob"], k=2)] == [
        r.items for r in exact.recommend(["ann", "bob"], k=2)
    ]
