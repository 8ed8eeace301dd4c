"""The scoring service as a client meets it: a real server process on 127.0.0.1, real HTTP.

A small model is trained here on simulated data and recorded in a hand-written dvc.lock (the
served files are hash-checked against it); `dvc status` is covered by the end-to-end tests."""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fraudlab.core import schema
from fraudlab.core.io import write_json
from fraudlab.core.params import load_params
from fraudlab.features.batch import build_features
from fraudlab.features.names import feature_names
from fraudlab.integrity.lock import file_md5
from fraudlab.modeling.artifact import model_artifact
from fraudlab.modeling.pipeline import fit_pipeline, predict_scores
from fraudlab.monitoring.drift import ReferenceProfile, bin_shares, psi, reference_profile
from fraudlab.serving.app import request_fields
from helpers import Server, exact_columns, refused_start
from test_monitoring_config import referenced_metrics

pytestmark = pytest.mark.slow  # real server processes over HTTP

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
KEY = "test-key-1-0123456789abcdef"
OTHER_KEY = "test-key-2-0123456789abcdef"
DAY = pd.Timedelta(days=1)
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def batch(small_transactions, features_params_module):
    """Every transaction with its batch features (the truth the service must match)."""
    return build_features(small_transactions, features_params_module)


@pytest.fixture(scope="module")
def features_params_module():
    return load_params(PARAMS, "features")["features"]


def write_served(models, batch, features, *, n_estimators: int = 10):
    """A small model trained on the first three weeks, with serving.json and its reference
    profile, written into ``models`` as train and evaluate write them."""
    models.mkdir(parents=True, exist_ok=True)
    train_params = load_params(PARAMS, "train")["train"]
    train_params = train_params.model_copy(
        update={"xgboost": train_params.xgboost.model_copy(update={"n_estimators": n_estimators})}
    )
    start = batch[schema.TX_DATETIME].min()
    train = batch[batch[schema.TX_DATETIME] < start + 21 * DAY]
    names = feature_names(features)
    pipeline = fit_pipeline(train, names, params=train_params)
    model = models / "model.joblib"
    joblib.dump(model_artifact(pipeline, params=train_params, features=features), model)
    serving = models / "serving.json"
    serving.write_text(
        json.dumps({"model_md5": file_md5(model), "threshold": THRESHOLD, "threshold_rule": "test"})
    )
    scores = predict_scores(pipeline, train, features=names)
    profile = reference_profile({n: train[n].to_numpy() for n in names}, scores=scores)
    write_json(profile.to_dict(), models / "reference_profile.json")  # as train does
    return pipeline


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, batch, features_params_module):
    """What `dvc repro` leaves for the service: model, serving.json, dvc.lock, clean data."""
    root = tmp_path_factory.mktemp("deployment")
    pipeline = write_served(root / "models", batch, features_params_module)
    write_lock(root)
    start = batch[schema.TX_DATETIME].min()
    cut = start + 30 * DAY
    batch[batch[schema.TX_DATETIME] < cut][list(schema.REQUIRED_COLUMNS)].to_parquet(
        root / "history.parquet"
    )
    return {
        "root": root,
        "pipeline": pipeline,
        "cut": cut,
        "names": feature_names(features_params_module),
    }


def write_lock(root) -> None:
    lock = {
        "schema": "2.0",
        "stages": {
            "train": {
                "outs": [
                    {"path": f"models/{name}", "md5": file_md5(root / "models" / name)}
                    for name in ("model.joblib", "reference_profile.json")
                ]
            },
            "evaluate": {
                "outs": [
                    {
                        "path": "models/serving.json",
                        "md5": file_md5(root / "models" / "serving.json"),
                    }
                ]
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


def server_args(root, store: str = "history.db", *extra: str) -> list[str]:
    return [
        "--model", str(root / "models" / "model.joblib"),
        "--serving", str(root / "models" / "serving.json"),
        "--reference", str(root / "models" / "reference_profile.json"),
        "--lock", str(root / "dvc.lock"),
        "--store", store if "://" in store else str(root / store),  # a file, or Redis's URL
        "--no-dvc-status",
        "--clock", "data", "--max-ahead", "1 day",  # sparse simulated 2018 data replayed
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server(deployment):
    """One server for the tests that only add transactions of their own."""
    args = server_args(
        deployment["root"], "shared.db", "--history", str(deployment["root"] / "history.parquet")
    )
    with Server(args, env={"FRAUDLAB_API_KEYS": f"{KEY},{OTHER_KEY}"}) as running:
        running.now = deployment["cut"]  # the seeded history's end: the data clock's time
        yield running


def test_a_replay_over_http_gives_the_batch_features_and_scores(deployment, batch):
    """Seed the days before the cut, then post every later transaction in time order, one by one
    and then in batches, each label once the clock has passed its transaction's time plus the
    label delay: every feature and score equals the batch pipeline's."""
    root = deployment["root"]
    later = replayed_period(deployment, batch)
    args = server_args(root, "replay.db", "--history", str(root / "history.parquet"))
    with Server(args, env={"FRAUDLAB_API_KEYS": KEY}) as running:
        online, scores = replay_over_http([running], later, names=deployment["names"])
    assert len(later) > 1000
    assert_batch_answers(deployment, later, online, scores)


def replayed_period(deployment, batch, *, days: int = 8) -> pd.DataFrame:
    cut = deployment["cut"]
    times = batch[schema.TX_DATETIME]
    return batch[(times >= cut) & (times < cut + days * DAY)]


def replay_over_http(servers, later: pd.DataFrame, *, names) -> tuple[np.ndarray, list]:
    """Post ``later`` in time order, the first half one transaction per request and the rest
    in batches of 100, each label once the clock has passed its transaction's time plus the
    label delay; request k goes to ``servers[k % len(servers)]`` (round robin over replicas).
    The features and scores answered, in order."""
    delay = pd.Timedelta(days=7)
    online_features, online_scores = [], []
    pending = collections.deque()
    rows = list(later.itertuples(index=False))
    singles, batched = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    turn = itertools.count()

    def post(path: str, body: dict) -> dict:
        status, answer = servers[next(turn) % len(servers)].request("POST", path, body, key=KEY)
        assert status == 200, answer
        return answer

    def post_due_labels(now) -> None:
        due = []
        while pending and pending[0].tx_datetime + delay <= now:
            due.append(pending.popleft())
        if due:
            labels = [
                {"transaction_id": int(r.transaction_id), "tx_fraud": int(r.tx_fraud)} for r in due
            ]
            post("/v1/labels", {"labels": labels})

    for row in singles:
        post_due_labels(row.tx_datetime)
        answer = post("/v1/score", request_fields(row))
        online_features.append([answer["features"][name] for name in names])
        online_scores.append(answer["score"])
        pending.append(row)
    for start in range(0, len(batched), 100):
        chunk = batched[start : start + 100]
        # every label due within the chunk: older than its first transaction, so known; a
        # label enters a window only once older than the delay, so none arrives early
        assert chunk[-1].tx_datetime - chunk[0].tx_datetime < delay
        post_due_labels(chunk[-1].tx_datetime)
        answer = post("/v1/score/batch", {"transactions": [request_fields(r) for r in chunk]})
        for result in answer["results"]:
            online_features.append([result["features"][name] for name in names])
            online_scores.append(result["score"])
        pending.extend(chunk)
    return np.array(online_features), online_scores


def assert_batch_answers(deployment, later: pd.DataFrame, online: np.ndarray, scores) -> None:
    """Features as the batch computes them (counts exactly, the rest within 1e-9), and the
    batch pipeline's scores."""
    names = deployment["names"]
    expected = later[names].to_numpy(dtype=np.float64)
    exact = exact_columns(names)
    np.testing.assert_array_equal(online[:, exact], expected[:, exact])
    np.testing.assert_allclose(online, expected, rtol=0, atol=1e-9)
    batch_scores = predict_scores(deployment["pipeline"], later, features=names)
    np.testing.assert_allclose(scores, batch_scores, rtol=0, atol=1e-9)
    assert 0 < (batch_scores >= THRESHOLD).sum() < len(batch_scores)  # both decisions occur


def _good(server, n=[0]) -> dict:  # noqa: B006 (a counter across calls)
    """A valid new transaction (a fresh id each call)."""
    n[0] += 1
    return {
        "transaction_id": 10**12 + n[0],
        # the data clock's time: where the seeded history ends, or the numbered ones begin
        "tx_datetime": getattr(server, "now", pd.Timestamp("2018-06-01T10:00")).isoformat(),
        "customer_id": 3,
        "terminal_id": 5,
        "tx_amount": 12.5,
    }


BAD_SCORES = [
    # (why, body or raw bytes, extra headers, status, words the message must hold)
    ("malformed JSON", b'{"transaction_id": 1,', {}, 400, "malformed JSON"),
    ("not JSON at all", b"transaction_id=1", {}, 400, "malformed JSON"),
    ("wrong content type", b"{}", {"Content-Type": "text/plain"}, 415, "application/json"),
    ("a list, not an object", [1, 2], {}, 422, "body"),
    ("missing field", {"tx_datetime": ...}, {}, 422, "tx_datetime: missing"),
    ("unknown field", {"extra": 1}, {}, 422, "extra: unknown field"),
    (
        "id as text",
        {"transaction_id": "12"},
        {},
        422,
        "transaction_id: Input should be a valid integer",
    ),
    ("id as float", {"transaction_id": 1.5}, {}, 422, "transaction_id"),
    ("id as bool", {"transaction_id": True}, {}, 422, "transaction_id"),
    ("id above int64", {"transaction_id": 2**63}, {}, 422, "transaction_id"),
    ("id below int64", {"transaction_id": -(2**63) - 1}, {}, 422, "transaction_id"),
    ("customer id as float", {"customer_id": 3.5}, {}, 422, "customer_id"),
    ("terminal id as text", {"terminal_id": "T5"}, {}, 422, "terminal_id"),
    ("amount as text", {"tx_amount": "12.5"}, {}, 422, "tx_amount"),
    (
        "negative amount",
        {"tx_amount": -0.01},
        {},
        422,
        "tx_amount: Input should be greater than or equal to 0",
    ),
    ("NaN amount", b"NaN", {}, 422, "tx_amount: Input should be a finite number"),
    ("infinite amount", b"1e999", {}, 422, "tx_amount: Input should be a finite number"),
    ("amount read as 0", b"1e-400", {}, 422, "tx_amount: 1e-400 is too small to represent"),
    ("a key given twice", b"twice", {}, 422, "customer_id: given more than once"),
    (
        "absurd amount",
        {"tx_amount": 1e15},
        {},
        422,
        "tx_amount: Input should be less than or equal to",
    ),
    ("null amount", {"tx_amount": None}, {}, 422, "tx_amount"),
    ("unparseable date", {"tx_datetime": "yesterday"}, {}, 422, "tx_datetime: not an ISO 8601"),
    (
        "impossible date",
        {"tx_datetime": "2018-02-30T10:00:00"},
        {},
        422,
        "tx_datetime: not an ISO 8601",
    ),
    (
        "date too early",
        {"tx_datetime": "1999-12-31T23:59:59"},
        {},
        422,
        "tx_datetime: before 2000-01-01",
    ),
    ("date far ahead", {"tx_datetime": "2200-01-01T00:00:00"}, {}, 422, "later than the accepted"),
    ("date far behind", {"tx_datetime": "2001-01-01T00:00:00"}, {}, 422, "older than the accepted"),
    (
        "date past a timestamp",
        {"tx_datetime": "9999-12-31T23:59:59-23:59"},
        {},
        422,
        "tx_datetime: outside the years a timestamp can hold",
    ),
    ("odd separator", {"tx_datetime": "2018-10-01X10:00:06"}, {}, 422, "not an ISO 8601"),
    (
        "sub-nanosecond date",
        {"tx_datetime": "2018-06-01T12:00:00.1234567891"},
        {},
        422,
        "precision",
    ),
    ("date as number", {"tx_datetime": 1527854400}, {}, 422, "tx_datetime"),
]


@pytest.mark.parametrize(
    ("why", "change", "headers", "status", "words"),
    BAD_SCORES,
    ids=[case[0] for case in BAD_SCORES],
)
def test_a_bad_score_request_gets_a_4xx_naming_the_problem_and_the_service_goes_on(
    server, why, change, headers, status, words
):
    good = _good(server)
    if isinstance(change, dict):  # a value of ... removes the field
        changed = {k: v for k, v in (good | change).items() if v is not ...}
        body = json.dumps(changed).encode()
    elif isinstance(change, list):
        body = json.dumps(change).encode()
    elif change in (b"NaN", b"1e999", b"1e-400"):
        body = json.dumps(good).replace("12.5", change.decode()).encode()
    elif change == b"twice":
        body = json.dumps(good).replace('"customer_id": 3', '"customer_id": 3, "customer_id": 4')
        body = body.encode()
    else:
        body = change
    got, answer = server.request("POST", "/v1/score", raw=body, key=KEY, headers=headers)
    assert got == status, (why, answer)
    assert words in answer["error"], (why, answer)
    again, answer = server.request("POST", "/v1/score", _good(server), key=KEY)
    assert again == 200, answer


def test_other_bad_requests_get_a_4xx_and_the_service_goes_on(server):
    first = _good(server)
    assert server.request("POST", "/v1/score", first, key=KEY)[0] == 200
    conflicting = first | {"tx_amount": 1.0}
    known = first["transaction_id"]

    def labels(tx_id, fraud):
        return {"labels": [{"transaction_id": tx_id, "tx_fraud": fraud}]}

    cases = [
        ("POST", "/v1/score", first | {"tx_amount": 99.0}, 409, "already stored with other"),
        ("POST", "/v1/score/batch", {"transactions": []}, 422, "transactions"),
        ("POST", "/v1/score/batch", {"transactions": [_good(server)] * 1001}, 422, "at most 1000"),
        ("POST", "/v1/score/batch", {"transactions": [_good(server), conflicting]}, 409, "other"),
        ("POST", "/v1/score/batch", {"transactions": [dict(_good(server), tx_amount=-1)]}, 422,
         "transactions.0.tx_amount"),
        ("POST", "/v1/labels", labels(987654321, 1), 404, "no stored transaction 987654321"),
        ("POST", "/v1/labels", labels(known, 2), 422, "tx_fraud"),
        ("POST", "/v1/labels", labels(known, True), 422, "tx_fraud"),
        ("POST", "/v1/labels", {"labels": []}, 422, "labels"),
        ("POST", "/v1/score", None, 400, "malformed JSON"),
        ("GET", "/v1/score", None, 405, ""),
        ("GET", "/nowhere", None, 404, ""),
    ]  # fmt: skip
    for method, path, body, status, words in cases:
        if body is None and method == "POST":
            got, answer = server.request(method, path, raw=b"", key=KEY)
        else:
            got, answer = server.request(method, path, body, key=KEY)
        assert got == status, (path, body, answer)
        if words:
            assert words in answer["error"], answer
        assert server.request("POST", "/v1/score", _good(server), key=KEY)[0] == 200
    # the refused batch stored nothing: its valid transaction is still new
    batch_good = cases[3][2]["transactions"][0]
    status, answer = server.request("POST", "/v1/score", batch_good, key=KEY)
    assert status == 200


def test_an_oversize_body_is_refused_with_413(server):
    huge = {"transactions": [_good(server) for _ in range(40_000)]}
    status, answer = server.request("POST", "/v1/score/batch", huge, key=KEY)
    assert status == 413
    assert "larger than" in answer["error"]
    assert server.request("POST", "/v1/score", _good(server), key=KEY)[0] == 200


def test_a_retry_gets_the_same_answer_and_adds_nothing(server):
    tx = _good(server)
    first = server.request("POST", "/v1/score", tx, key=KEY)
    again = server.request("POST", "/v1/score", tx, key=KEY)
    assert first == again
    assert first[0] == 200
    as_batch = server.request("POST", "/v1/score/batch", {"transactions": [tx, tx]}, key=KEY)
    assert as_batch[1]["results"] == [first[1], first[1]]


def test_every_endpoint_but_health_needs_a_key(server):
    for path in ("/healthz", "/readyz"):
        assert server.request("GET", path)[0] == 200
    for method, path in [
        ("POST", "/v1/score"),
        ("POST", "/v1/score/batch"),
        ("POST", "/v1/labels"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ]:
        for key in (None, "wrong-key", KEY + "x", ""):
            status, answer = server.request(method, path, {} if method == "POST" else None, key=key)
            assert status == 401, (method, path, key, answer)
            assert "API key" in answer["error"]
    assert server.request("POST", "/v1/score", _good(server), key=KEY)[0] == 200
    assert server.request("POST", "/v1/score", _good(server), key=OTHER_KEY)[0] == 200
    status, docs = server.request("GET", "/openapi.json", key=KEY)
    assert status == 200
    assert "/v1/score/batch" in docs["paths"]
    assert all(KEY not in line and OTHER_KEY not in line for line in server.log)


def _raw_request(server, lines: list[str], body: bytes = b"") -> tuple[int, dict]:
    """One request written by hand (header lines as given, e.g. repeated), on a new
    connection: what http.client would not send."""
    host, port = server.url.removeprefix("http://").split(":")
    head = "\r\n".join([*lines, f"Content-Length: {len(body)}", "", ""]).encode()
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, json.loads(response.read() or b"{}")


def test_the_bearer_scheme_is_any_case_and_the_header_comes_once(server):
    body = json.dumps(_good(server)).encode()
    start = ["POST /v1/score HTTP/1.1", "Host: x", "Content-Type: application/json"]
    for scheme in ("bearer", "BEARER", "Bearer"):
        status, _ = _raw_request(server, [*start, f"Authorization: {scheme} {KEY}"], body)
        assert status == 200, scheme
    twice = [*start, f"Authorization: Bearer {KEY}", f"Authorization: Bearer {OTHER_KEY}"]
    status, answer = _raw_request(server, twice, json.dumps(_good(server)).encode())
    assert (status, answer["error"]) == (400, "more than one Authorization header")
    # the open readiness probe tells nothing about the model
    assert server.request("GET", "/readyz") == (200, {"status": "ready"})


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"env": "short-key"}, "FRAUDLAB_API_KEYS: key 1 is refused: a key is at least 16"),
        ({"env": f"{KEY},with space in it!!"}, "FRAUDLAB_API_KEYS: key 2 is refused"),
        ({"file": "a-key-with,a-comma-inside\n"}, "key 1 is refused"),
        ({"file": b"\xff\xfe not utf-8 at all, no\n"}, "is not UTF-8 text"),
        ({"directory": True}, "is a directory, not a file of keys"),
    ],
    ids=["short", "space", "comma in a file", "not utf-8", "directory"],
)
def test_a_weak_or_unreadable_key_refuses_the_start_in_one_line(
    deployment, tmp_path, keys, expected
):
    args = server_args(deployment["root"], "keys.db")
    env = {"FRAUDLAB_API_KEYS": keys.get("env", "")}
    if "file" in keys or "directory" in keys:
        path = tmp_path / "keys"
        if "directory" in keys:
            path.mkdir()
        elif isinstance(keys["file"], bytes):
            path.write_bytes(keys["file"])
        else:
            path.write_text(keys["file"])
        args += ["--api-key-file", str(path)]
    status, log = refused_start(args, env=env)
    assert status == 1
    assert expected in log
    assert "Traceback" not in log
    for secret in ("short-key", "with space", "a-comma-inside"):
        assert secret not in log  # a refused key is named by its position, never shown


def _samples(server) -> dict:
    status, text = server.request("GET", "/metrics", key=KEY)
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_the_requests_sent(server):
    before = _samples(server)
    sent = collections.Counter()
    for _ in range(7):
        assert server.request("POST", "/v1/score", _good(server), key=KEY)[0] == 200
        sent["/v1/score", "200"] += 1
    for _ in range(3):
        assert server.request("POST", "/v1/score", {"x": 1}, key=KEY)[0] == 422
        sent["/v1/score", "422"] += 1
    status, _ = server.request(
        "POST", "/v1/score/batch", {"transactions": [_good(server) for _ in range(5)]}, key=KEY
    )
    assert status == 200
    sent["/v1/score/batch", "200"] += 1
    assert server.request("POST", "/v1/score", _good(server), key="wrong")[0] == 401
    sent["/v1/score", "401"] += 1
    after = _samples(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for (endpoint, status), count in sent.items():
        assert delta("fraudlab_requests_total", endpoint=endpoint, status=status) == count
    assert delta("fraudlab_request_duration_seconds_count", endpoint="/v1/score") == 11
    decisions = delta("fraudlab_decisions_total", decision="fraud") + delta(
        "fraudlab_decisions_total", decision="legit"
    )
    assert decisions == 12  # 7 single + 5 batched, each scored once
    assert delta("fraudlab_score_count") == 12
    assert after[("fraudlab_history_transactions", ())] >= 12
    assert (
        "fraudlab_request_duration_seconds_bucket",
        (("endpoint", "/v1/score"), ("le", "0.0005")),
    ) in after
    (info,) = [key for key in after if key[0] == "fraudlab_model_info"]
    assert dict(info[1])["family"] == "xgboost"


def _drift_gauges(running) -> tuple[dict[str, float], dict]:
    status, text = running.request("GET", "/metrics", key=KEY)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    psi = {s.labels["column"]: s.value for s in families["fraudlab_drift_psi"].samples}
    plain = {
        name: families[name].samples[0].value if families[name].samples else None
        for name in ("fraudlab_window_alert_share", "fraudlab_drift_window_transactions")
    }
    return psi, plain


def _window_psi(answers: list[dict], names: list[str], reference) -> dict[str, float]:
    """The PSI a window of these answers must show, computed offline from what they carry."""
    columns = {n: np.array([a["features"][n] for a in answers]) for n in names}
    columns["score"] = np.array([a["score"] for a in answers])
    profiles = {**reference.features, "score": reference.score}
    return {
        n: psi(profiles[n].shares, bin_shares(v, profiles[n].edges)) for n, v in columns.items()
    }


def test_metrics_show_the_drift_of_the_recent_window_against_the_reference(deployment, batch):
    """/metrics' PSI per feature and score equals the PSI of the last --drift-window answers
    computed offline from the features and scores they carry; inflated amounts move
    tx_amount's PSI past the act level, and the window forgets what slid out of it."""
    root, cut, names = deployment["root"], deployment["cut"], deployment["names"]
    reference = ReferenceProfile.from_dict(
        json.loads((root / "models" / "reference_profile.json").read_text())
    )
    later = batch[batch[schema.TX_DATETIME] >= cut].head(300)
    args = server_args(root, "drift.db", "--history", str(root / "history.parquet"),
                       "--drift-window", "120")  # fmt: skip
    answers: list[dict] = []

    def post(rows) -> None:
        status, body = running.request(
            "POST", "/v1/score/batch", {"transactions": [request_fields(r) for r in rows]}, key=KEY
        )
        assert status == 200, body
        answers.extend(body["results"])

    with Server(args, env={"FRAUDLAB_API_KEYS": KEY}) as running:
        psi_before, plain = _drift_gauges(running)
        assert psi_before == {}  # nothing scored yet: no PSI, not a zero
        assert plain["fraudlab_window_alert_share"] is None
        rows = list(later.head(150).itertuples(index=False))
        for start in range(0, 150, 50):  # three rounds: the window wraps inside the third
            post(rows[start : start + 50])
        shown, plain = _drift_gauges(running)
        expected = _window_psi(answers[-120:], names, reference)
        assert shown == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert plain["fraudlab_drift_window_transactions"] == 120
        alerted = np.mean([a["fraud"] for a in answers[-120:]])
        assert plain["fraudlab_window_alert_share"] == pytest.approx(alerted)
        assert shown["tx_amount"] < 0.25

        inflated = later.iloc[150:].assign(**{schema.TX_AMOUNT: later[schema.TX_AMOUNT] * 3})
        post(list(inflated.head(130).itertuples(index=False)))  # fills the window alone
        shown, _ = _drift_gauges(running)
        assert shown == pytest.approx(_window_psi(answers[-120:], names, reference), rel=1e-9)
        assert shown["tx_amount"] >= 0.25


def test_the_alert_rules_and_dashboard_read_only_metrics_the_service_exports(server):
    scored = _good(server)
    assert server.request("POST", "/v1/score", scored, key=KEY)[0] == 200
    label = {"labels": [{"transaction_id": scored["transaction_id"], "tx_fraud": 0}]}
    assert server.request("POST", "/v1/labels", label, key=KEY)[0] == 200
    exported = {name for name, _ in _samples(server)}
    referenced = referenced_metrics()
    assert {"fraudlab_drift_psi", "fraudlab_window_alert_share"} <= referenced
    assert referenced <= exported, referenced - exported


def _numbered(n: int) -> dict:
    return {
        "transaction_id": n,
        "tx_datetime": f"2018-06-01T10:{n // 60 % 60:02d}:{n % 60:02d}",
        "customer_id": n % 5,
        "terminal_id": n % 3,
        "tx_amount": float(n),
    }


def test_a_kill_9_loses_no_acknowledged_transaction(deployment):
    root = deployment["root"]
    args = server_args(root, "durable.db", "--create-store")
    acknowledged: dict[int, dict] = {}
    running = Server(args, env={"FRAUDLAB_API_KEYS": KEY}).start()
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tx = _numbered(n)
            try:
                status, answer = running.request("POST", "/v1/score", tx, key=KEY)
            except OSError:
                return
            if status == 200:
                acknowledged[n] = answer

    writers = [threading.Thread(target=stream) for _ in range(1)]
    for writer in writers:
        writer.start()
    while len(acknowledged) < 200:
        threading.Event().wait(0.01)
    running.kill()
    stop.set()
    for writer in writers:
        writer.join()
    with sqlite3.connect(root / "durable.db") as db:
        ids = [row[0] for row in db.execute("SELECT transaction_id FROM history")]
    assert len(ids) == len(set(ids))
    assert set(acknowledged) <= set(ids)
    with Server(args, env={"FRAUDLAB_API_KEYS": KEY}) as restarted:
        for n in list(acknowledged)[-20:]:
            tx = _numbered(n)
            assert restarted.request("POST", "/v1/score", tx, key=KEY) == (200, acknowledged[n])
        assert restarted.request("POST", "/v1/score", _good(None), key=KEY)[0] == 200


def test_no_key_configured_refuses_to_start_unless_asked(deployment, monkeypatch):
    monkeypatch.delenv("FRAUDLAB_API_KEYS", raising=False)
    status, log = refused_start(
        server_args(deployment["root"], "nokey.db"), env={"FRAUDLAB_API_KEYS": ""}
    )
    assert status == 1
    assert "no API key configured" in log
    args = server_args(deployment["root"], "nokey.db", "--no-auth", "--create-store")
    with Server(args, env={"FRAUDLAB_API_KEYS": ""}) as running:
        assert running.request("POST", "/v1/score", _good(None))[0] == 200


def test_a_missing_store_is_never_replaced_without_being_asked(deployment, tmp_path):
    """A store that is not there refuses the start, unless seeding or --create-store says to
    make one; a store that was lost stays lost until restored, never silently empty."""
    root = deployment["root"]
    args = server_args(root, "lost.db")
    status, log = refused_start(args, env={"FRAUDLAB_API_KEYS": KEY})
    assert status == 1
    assert "lost.db does not exist: pass --history FILE to seed a new store" in log
    assert "Traceback" not in log
    assert not (root / "lost.db").exists()
    with Server([*args, "--create-store"], env={"FRAUDLAB_API_KEYS": KEY}) as running:
        assert running.request("POST", "/v1/score", _good(None), key=KEY)[0] == 200
    for part in root.glob("lost.db*"):
        part.unlink()  # the store deleted while the service was down
    status, log = refused_start(args, env={"FRAUDLAB_API_KEYS": KEY})
    assert status == 1
    assert "does not exist" in log


def test_a_tampered_or_missing_file_refuses_the_start(deployment, tmp_path):
    root = deployment["root"]
    copy = tmp_path / "copy"
    (copy / "models").mkdir(parents=True)
    names = ("models/model.joblib", "models/serving.json", "models/reference_profile.json")
    for name in (*names, "dvc.lock"):
        (copy / name).write_bytes((root / name).read_bytes())
    env = {"FRAUDLAB_API_KEYS": KEY}
    model = copy / "models" / "model.joblib"
    model.write_bytes(model.read_bytes() + b"\0")
    status, log = refused_start(server_args(copy), env=env)
    assert status == 1
    assert "model.joblib: MD5" in log
    assert "dvc repro train" in log
    model.write_bytes((root / "models" / "model.joblib").read_bytes())
    (copy / "models" / "serving.json").unlink()
    status, log = refused_start(server_args(copy), env=env)
    assert status == 1
    assert "serving.json: missing" in log
    assert "dvc repro evaluate" in log
    (copy / "models" / "serving.json").write_bytes((root / "models/serving.json").read_bytes())
    reference = copy / "models" / "reference_profile.json"
    reference.write_text(reference.read_text().replace('"count"', ' "count"', 1))
    status, log = refused_start(server_args(copy), env=env)
    assert status == 1
    assert "reference_profile.json: MD5" in log
    assert "dvc repro train" in log
    assert not (copy / "history.db").exists()  # nothing was started


def test_several_workers_share_one_store_and_one_set_of_metrics(deployment):
    """Two server processes: concurrent requests land on both, every transaction is stored once
    and scored with every one acknowledged before it, and /metrics adds up both processes."""
    args = server_args(deployment["root"], "workers.db", "--workers", "2", "--create-store")
    answers: dict[int, dict] = {}

    def post(first: int) -> None:
        for n in range(first, first + 40):
            status, answer = running.request("POST", "/v1/score", _numbered(n), key=KEY)
            assert status == 200, answer
            answers[n] = answer

    with Server(args, env={"FRAUDLAB_API_KEYS": KEY}) as running:
        # ready means one worker has loaded; wait for the other too
        deadline = time.monotonic() + 120
        while sum("serving model" in line for line in running.log) < 2:
            assert time.monotonic() < deadline, "".join(running.log)
            time.sleep(0.1)
        threads = [threading.Thread(target=post, args=(1 + 40 * i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        window = ("fraudlab_drift_window_transactions", ())
        deadline = time.monotonic() + 10  # the other worker publishes its window within 1 s
        while (samples := _samples(running))[window] < 160 and time.monotonic() < deadline:
            time.sleep(0.2)
    score_200 = ("fraudlab_requests_total", (("endpoint", "/v1/score"), ("status", "200")))
    assert samples[score_200] == 160
    assert samples[("fraudlab_history_transactions", ())] == 160
    # each worker's drift window is published and summed: PSI over all 160, whichever took them
    assert samples[("fraudlab_drift_window_transactions", ())] == 160
    psi_columns = {
        dict(labels)["column"] for name, labels in samples if name == "fraudlab_drift_psi"
    }
    assert psi_columns == {*deployment["names"], "score"}
    with sqlite3.connect(deployment["root"] / "workers.db") as db:
        stored = db.execute("SELECT count(*), count(DISTINCT transaction_id) FROM history")
        assert stored.fetchone() == (160, 160)
        order = [row[0] for row in db.execute("SELECT transaction_id FROM history ORDER BY seq")]
    # whichever worker took it, each transaction saw exactly the same-customer transactions
    # stored before it (and earlier in time): as if one process had scored them in store order
    for position, n in enumerate(order):
        before = [m for m in order[:position] if m % 5 == n % 5 and m < n]
        assert answers[n]["features"]["customer_id_nb_tx_1day_window"] == len(before) + 1, n


def test_a_history_file_that_cannot_seed_refuses_the_start(deployment, tmp_path):
    env = {"FRAUDLAB_API_KEYS": KEY}
    text_times = tmp_path / "text_times.parquet"
    row = {
        "transaction_id": [1],
        "tx_datetime": ["2018-06-01"],
        "customer_id": [1],
        "terminal_id": [1],
        "tx_amount": [1.0],
    }
    pd.DataFrame(row).to_parquet(text_times)
    no_amount = tmp_path / "no_amount.parquet"
    pd.read_parquet(deployment["root"] / "history.parquet").drop(columns="tx_amount").to_parquet(
        no_amount
    )
    not_parquet = tmp_path / "history.csv"
    not_parquet.write_text("transaction_id\n1\n")
    cases = [
        (tmp_path / "missing.parquet", "no such file"),
        (not_parquet, "not a readable Parquet file"),
        (no_amount, "missing ['tx_amount']"),
        (text_times, "tx_datetime is"),
    ]
    for path, words in cases:
        args = server_args(deployment["root"], "never.db", "--history", str(path))
        status, log = refused_start(args, env=env)
        assert status == 1, log
        assert f"--history {path}: " in log
        assert words in log
        assert "Traceback" not in log
