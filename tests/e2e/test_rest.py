"""Black-box tests of the REST gateway, as a curl user sees it: the seed
README's curl examples run as written, every endpoint with its documented
status codes and JSON keys, the four callback outcomes sent by hand, the
Idempotency-Key, duplicate and concurrency-limit 429s, a table of bad
requests, 500 concurrent requests, and api.log. Run by tests/e2e/test_rest.sh
against server + gateway + mock provider (1 h callback delay) + consumers.
Standard library only on the REST side (http.client, socket)."""
import concurrent.futures
import datetime
import glob
import http.client as httplib
import json
import os
import re
import socket
import threading
import time
import unittest
import uuid

from grpc_env import psql, redis
from rest_env import wait_until

TOKEN = "dev-token-12345"
HOST = "127.0.0.1"
PORT = int(os.environ.get("HTTP_PORT", "8000"))
MAX_CALLS = int(os.environ.get("MAX_CONCURRENT_CALLS", "40"))
LOG_DIR = os.environ.get("LOG_DIR", "logs")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CALL_ID = re.compile(r"^call_(\d+)_(\+\d+)_(\d{14})_([0-9a-f]{8})$")

MSG_NO_TOKEN = "Authentication credentials were not provided or are invalid."
MSG_BAD_TOKEN = "Invalid authentication token."
MSG_BAD_PHONE = "Invalid phone number format. Must start with + and contain digits."
MSG_NO_CAMPAIGN = "Campaign not found or inactive."
MSG_NO_CALL = "Call not found."
MSG_BAD_STATUS = "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED"
MSG_DUPLICATE = "A call to this number is already in progress or was made recently."
MSG_LIMIT = "Maximum concurrent calls limit reached. Please try again later."
MSG_IDEMPOTENCY = "Idempotency-Key reused with a different request."

CAMPAIGN_KEYS = {"id", "name", "description", "is_active", "created_at", "updated_at",
                 "phone_count"}
PHONE_KEYS = {"success", "campaign_id", "added_count", "phone_numbers", "duplicate_count",
              "errors", "created_count", "created_numbers"}
INITIATE_KEYS = {"success", "call_id", "status", "phone_number", "campaign_id", "campaign_name",
                 "attempt_count", "max_attempts", "created_at"}
CALL_KEYS = {"call_id", "campaign_id", "phone_number", "status", "attempt_count", "max_attempts",
             "next_retry_at", "last_attempt_at", "total_call_time", "external_call_id",
             "error_message", "created_at", "updated_at", "attempts"}
ATTEMPT_KEYS = {"attempt", "status", "external_call_id", "dispatched_at", "outcome_at",
                "call_duration"}
COUNTER_KEYS = ["total_calls_initiated", "total_calls_picked", "total_calls_disconnected",
                "total_calls_rnr", "total_calls_failed", "total_retries",
                "peak_concurrent_calls", "total_call_duration", "dlq_entries_created"]
DAY_KEYS = set(COUNTER_KEYS) | {"date", "avg_call_duration"}

_numbers = [0]
_numbers_lock = threading.Lock()


def fresh_number(prefix="+1444"):
    """A number no other test (nor an earlier run on this database) used."""
    with _numbers_lock:
        _numbers[0] += 1
        n = _numbers[0]
    return "%s%04d%03d" % (prefix, os.getpid() % 10000, n)


class Response:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers  # lower-case names
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "%s %s" % (self.status, self.raw[:400])


def http(method, path, body=None, token=TOKEN, headers=None, timeout=30):
    """One request on its own connection, the path sent exactly as given
    (no quoting, no redirect following). body: bytes/str sent as is, any
    other value JSON-encoded, None for no body."""
    conn = httplib.HTTPConnection(HOST, PORT, timeout=timeout)
    h = {}
    if token is not None:
        h["X-Auth-Token"] = token
    data = None
    if body is not None:
        h["Content-Type"] = "application/json"
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
    h.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, raw)
    finally:
        conn.close()


def in_flight():
    return int(psql("SELECT count(*) FROM calls_calllog "
                    "WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING')"))


def callbacks_settled(call_id):
    """True when every callback recorded for call_id has been handled by the
    callback consumer (applied or ignored)."""
    return psql("SELECT count(*) FROM calls_callback WHERE call_id = '%s' "
                "AND applied_at IS NULL" % call_id) == "0"


class Rest(unittest.TestCase):
    """One ordered story (tests run in name order and share state)."""

    campaign = None  # the seed walkthrough's campaign
    calls = {}  # name -> call_id

    @classmethod
    def setUpClass(cls):
        wait_until(lambda: http("GET", "/health/", token=None).status == 200, 30,
                   "gateway /health/ to answer 200")

    # ---------------------------------------------------------------- helpers

    def assertError(self, r, status, code, message=None, field=None, details=None):
        self.assertEqual(r.status, status, r)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(set(r.json), {"error"}, r)
        err = r.json["error"]
        self.assertEqual(set(err), {"code", "message", "details"}, r)
        self.assertEqual(err["code"], code, r)
        self.assertIsInstance(err["message"], str, r)
        self.assertTrue(err["message"], r)
        self.assertIsInstance(err["details"], dict, r)
        if message is not None:
            self.assertEqual(err["message"], message, r)
        if field is not None:
            self.assertEqual(err["details"].get("field"), field, r)
        if details is not None:
            self.assertEqual(err["details"], details, r)
        self.assertTrue(r.header("Content-Type").startswith("application/json"), r.headers)

    def assertCampaign(self, c):
        self.assertEqual(set(c), CAMPAIGN_KEYS, c)
        self.assertIsInstance(c["id"], int)
        self.assertIsInstance(c["phone_count"], int)
        self.assertIsInstance(c["is_active"], bool)
        self.assertRegex(c["created_at"], TS)
        self.assertRegex(c["updated_at"], TS)

    def assertCall(self, c):
        self.assertEqual(set(c), CALL_KEYS, c)
        for k in ("campaign_id", "attempt_count", "max_attempts", "total_call_time"):
            self.assertIsInstance(c[k], int, k)
        for a in c["attempts"]:
            self.assertEqual(set(a), ATTEMPT_KEYS, a)
            self.assertIsInstance(a["attempt"], int)

    def new_campaign(self, name="REST e2e"):
        r = http("POST", "/api/v1/campaigns/", {"name": name})
        self.assertEqual(r.status, 201, r)
        return r.json["id"]

    def initiate(self, number, campaign=None, headers=None):
        return http("POST", "/api/v1/initiate-call/",
                    {"phone_number": number, "campaign_id": campaign or self.campaign},
                    headers=headers)

    def get_call(self, call_id):
        r = http("GET", "/api/v1/calls/%s/" % call_id)
        self.assertEqual(r.status, 200, r)
        self.assertCall(r.json)
        return r.json

    def wait_dispatched(self, call_id):
        """Until the consumer has called the provider: INITIATED again with
        the provider's external_call_id."""
        state = {}

        def dispatched():
            c = self.get_call(call_id)
            state["call"] = c
            return c["status"] == "INITIATED" and c["external_call_id"] is not None
        wait_until(dispatched, 30, "call %s to be dispatched" % call_id)
        return state["call"]

    def wait_status(self, call_id, status):
        state = {}

        def reached():
            state["call"] = self.get_call(call_id)
            return state["call"]["status"] == status
        wait_until(reached, 30, "call %s to become %s" % (call_id, status))
        return state["call"]

    def metrics(self):
        r = http("GET", "/api/v1/metrics/")
        self.assertEqual(r.status, 200, r)
        return r.json

    def callback(self, body):
        return http("PUT", "/api/v1/callback/", body)

    # --------------------------------------------------- the seed README flow

    def test_01_seed_readme_walkthrough(self):
        cls = type(self)
        # Step 1: Create Campaign (the README's curl, body as written).
        r = http("POST", "/api/v1/campaigns/", '''{
    "name": "Marketing Campaign Q1",
    "description": "Cold calling for Q1 leads"
  }''')
        self.assertEqual(r.status, 201, r)
        self.assertTrue(r.header("Content-Type").startswith("application/json"))
        c = r.json
        self.assertCampaign(c)
        self.assertEqual(c["name"], "Marketing Campaign Q1")
        self.assertEqual(c["description"], "Cold calling for Q1 leads")
        self.assertIs(c["is_active"], True)
        self.assertEqual(c["phone_count"], 0)
        cls.campaign = cid = c["id"]

        # Step 2: Add Phone Numbers.
        r = http("POST", "/api/v1/phone-numbers/", '''{
    "campaign_id": %d,
    "phone_numbers": [
      "+1234567890",
      "+1234567891",
      "+1234567892"
    ]
  }''' % cid)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(set(r.json), PHONE_KEYS, r)
        self.assertIs(r.json["success"], True)
        self.assertEqual(r.json["campaign_id"], cid)
        self.assertEqual(r.json["added_count"], 3)
        nums = ["+1234567890", "+1234567891", "+1234567892"]
        self.assertEqual(r.json["phone_numbers"], nums)
        self.assertEqual(r.json["created_count"], 3)
        self.assertEqual(r.json["created_numbers"], nums)
        self.assertEqual(r.json["duplicate_count"], 0)
        self.assertEqual(r.json["errors"], [])

        # Step 3: Initiate Call.
        r = http("POST", "/api/v1/initiate-call/", '''{
    "phone_number": "+1234567890",
    "campaign_id": %d
  }''' % cid)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(set(r.json), INITIATE_KEYS, r)
        self.assertIs(r.json["success"], True)
        self.assertEqual(r.json["status"], "INITIATED")
        self.assertEqual(r.json["phone_number"], "+1234567890")
        self.assertEqual(r.json["campaign_id"], cid)
        self.assertEqual(r.json["campaign_name"], "Marketing Campaign Q1")
        self.assertEqual(r.json["attempt_count"], 1)
        self.assertEqual(r.json["max_attempts"], 3)
        self.assertRegex(r.json["created_at"], TS)
        m = CALL_ID.match(r.json["call_id"])
        self.assertIsNotNone(m, r.json["call_id"])
        self.assertEqual(m.group(1), str(cid))
        self.assertEqual(m.group(2), "+1234567890")
        cls.calls["seed"] = r.json["call_id"]
        self.assertEqual(redis("EXISTS", "call_lock:+1234567890"), "1")

        # Step 5: Monitor Call Status (metrics, no Content-Type, as written).
        r = http("GET", "/api/v1/metrics/")
        self.assertEqual(r.status, 200, r)
        m = r.json
        for k in ("current_concurrent_calls", "max_concurrent_calls", "system_status",
                  "recent_metrics"):
            self.assertIn(k, m)
        self.assertIsInstance(m["current_concurrent_calls"], int)
        self.assertGreaterEqual(m["current_concurrent_calls"], 1)
        self.assertEqual(m["max_concurrent_calls"], MAX_CALLS)
        self.assertEqual(m["system_status"], "healthy")
        self.assertEqual(m["dependencies"], {"database": "ok", "redis": "ok", "kafka": "ok"})
        days = m["recent_metrics"]
        self.assertEqual(len(days), 7)
        today = datetime.datetime.now(datetime.timezone.utc).date()
        self.assertEqual([d["date"] for d in days],
                         [(today - datetime.timedelta(days=i)).isoformat() for i in range(7)])
        for d in days:
            self.assertEqual(set(d), DAY_KEYS, d)
            for k in COUNTER_KEYS:
                self.assertIsInstance(d[k], int, k)
            self.assertIsInstance(d["avg_call_duration"], float)
        for d in days[1:]:  # fresh database: earlier days zero-filled
            self.assertTrue(all(d[k] == 0 for k in COUNTER_KEYS), d)
            self.assertEqual(d["avg_call_duration"], 0.0)
        self.assertGreaterEqual(days[0]["total_calls_initiated"], 1)
        self.assertGreaterEqual(days[0]["peak_concurrent_calls"], 1)

        # Step 6, scenario 1: initiate and send DISCONNECTED by hand (after
        # the call was dispatched, so that the outcome applies to it).
        r = http("POST", "/api/v1/initiate-call/",
                 '{"phone_number": "+1555000001", "campaign_id": %d}' % cid)
        self.assertEqual(r.status, 201, r)
        cls.calls["disconnected"] = r.json["call_id"]

    def test_02_seed_readme_error_examples(self):
        # 401 Unauthorized (Missing Token): curl -X GET .../api/v1/metrics/
        r = http("GET", "/api/v1/metrics/", token=None)
        self.assertError(r, 401, "unauthorized", MSG_NO_TOKEN, details={})
        # 404 Not Found (Campaign Not Found).
        r = http("GET", "/api/v1/campaigns/999/")
        self.assertError(r, 404, "not_found", MSG_NO_CAMPAIGN, details={})
        # 400 Bad Request (Invalid Phone Number), body as written.
        r = http("POST", "/api/v1/initiate-call/", '''{
    "phone_number": "invalid",
    "campaign_id": 1
  }''')
        self.assertError(r, 400, "bad_request", MSG_BAD_PHONE, details={})

    # ------------------------------------------------------ reads and paths

    def test_03_campaigns_list_and_get(self):
        cid = self.campaign
        extra = [self.new_campaign("list %d" % i) for i in range(3)]
        off = http("POST", "/api/v1/campaigns/", {"name": "off", "is_active": False})
        self.assertEqual(off.status, 201, off)
        self.assertIs(off.json["is_active"], False)
        r = http("GET", "/api/v1/campaigns/")
        self.assertEqual(r.status, 200, r)
        self.assertIsInstance(r.json, list)
        ids = [c["id"] for c in r.json]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(ids), len(set(ids)))
        for c in r.json:
            self.assertCampaign(c)
            self.assertIs(c["is_active"], True)
        self.assertTrue({cid, *extra} <= set(ids))
        self.assertNotIn(off.json["id"], ids)
        r = http("GET", "/api/v1/campaigns/%d/" % off.json["id"])
        self.assertError(r, 404, "not_found", MSG_NO_CAMPAIGN)
        page = http("GET", "/api/v1/campaigns/?limit=2&offset=1")
        self.assertEqual(page.status, 200, page)
        self.assertEqual([c["id"] for c in page.json], ids[1:3])
        self.assertEqual(http("GET", "/api/v1/campaigns/?limit=0").json, [])
        self.assertEqual([c["id"] for c in http("GET", "/api/v1/campaigns/?offset=2").json],
                         ids[2:])
        self.assertEqual(http("GET", "/api/v1/campaigns/?offset=100000").json, [])
        r = http("GET", "/api/v1/campaigns/%d/" % cid)
        self.assertEqual(r.status, 200, r)
        self.assertCampaign(r.json)
        self.assertEqual(r.json["id"], cid)
        self.assertEqual(r.json["name"], "Marketing Campaign Q1")
        self.assertEqual(r.json["phone_count"], 3)

    def test_04_phone_numbers_details(self):
        cid = self.campaign
        r = http("POST", "/api/v1/phone-numbers/", {
            "campaign_id": cid,
            "phone_numbers": ["+1234567890", "+1 (555) 123-4567", "abc", "+1.555.123.4567"]})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(set(r.json), PHONE_KEYS, r)
        self.assertEqual(r.json["added_count"], 1)
        self.assertEqual(r.json["phone_numbers"], ["+15551234567"])
        self.assertEqual(r.json["created_numbers"], ["+15551234567"])
        self.assertEqual(r.json["duplicate_count"], 2)
        self.assertEqual(r.json["errors"], ["Invalid phone number: abc"])
        self.assertEqual(http("GET", "/api/v1/campaigns/%d" % cid).json["phone_count"], 4)
        r = http("POST", "/api/v1/phone-numbers/", {"campaign_id": cid, "phone_numbers": []})
        self.assertError(r, 400, "bad_request", "phone_numbers must contain 1 to 10000 entries")
        r = http("POST", "/api/v1/phone-numbers/", {"phone_numbers": ["+1234567890"]})
        self.assertError(r, 400, "bad_request")
        r = http("POST", "/api/v1/phone-numbers/", {"campaign_id": cid})
        self.assertError(r, 400, "bad_request")
        r = http("POST", "/api/v1/phone-numbers/",
                 {"campaign_id": 987654321, "phone_numbers": ["+1234567890"]})
        self.assertError(r, 404, "not_found")

    def test_05_calls_by_id_plus_and_trailing_slash(self):
        call_id = self.calls["seed"]
        self.assertIn("+", call_id)
        encoded = call_id.replace("+", "%2B")
        for path in ["/api/v1/calls/%s/" % call_id, "/api/v1/calls/%s" % call_id,
                     "/api/v1/calls/%s/" % encoded, "/api/v1/calls/%s" % encoded]:
            r = http("GET", path)
            self.assertEqual(r.status, 200, (path, r))
            self.assertCall(r.json)
            self.assertEqual(r.json["call_id"], call_id)
            self.assertEqual(r.json["phone_number"], "+1234567890")
            self.assertEqual(r.json["campaign_id"], self.campaign)
            self.assertGreaterEqual(len(r.json["attempts"]), 1)
            self.assertEqual(r.json["attempts"][0]["attempt"], 1)
        # '+' must stay '+', never become a space.
        r = http("GET", "/api/v1/calls/%s/" % call_id.replace("+", "%20"))
        self.assertError(r, 404, "not_found", MSG_NO_CALL)
        r = http("GET", "/api/v1/calls/call_1_%2B19999999999_20250101000000_deadbeef/")
        self.assertError(r, 404, "not_found", MSG_NO_CALL)
        # Trailing slash optional everywhere, and never a redirect.
        for method, path in [("GET", "/health"), ("GET", "/health/"),
                             ("GET", "/api/v1/campaigns"), ("GET", "/api/v1/campaigns/"),
                             ("GET", "/api/v1/campaigns/%d" % self.campaign),
                             ("GET", "/api/v1/metrics"), ("GET", "/api/v1/metrics/")]:
            r = http(method, path, token=None if path.startswith("/health") else TOKEN)
            self.assertEqual(r.status, 200, (path, r))
            self.assertIsNone(r.header("Location"), path)
        r = http("POST", "/api/v1/campaigns", {"name": "no slash"})
        self.assertEqual(r.status, 201, r)
        r = http("POST", "/api/v1/phone-numbers",
                 {"campaign_id": self.campaign, "phone_numbers": ["+1234567893"]})
        self.assertEqual(r.status, 201, r)
        r = http("PUT", "/api/v1/callback", {"call_id": "nope", "status": "PICKED"})
        self.assertError(r, 404, "not_found", MSG_NO_CALL)
        r = http("POST", "/api/v1/initiate-call", {"phone_number": "x", "campaign_id": 1})
        self.assertError(r, 400, "bad_request", MSG_BAD_PHONE)
        r = http("GET", "/health/", token=None)
        self.assertEqual(r.json, {"status": "healthy"})

    # --------------------------------------------------------- callbacks

    def test_06_four_callback_outcomes(self):
        cls = type(self)
        for name in ("picked", "failed", "rnr"):
            r = self.initiate(fresh_number())
            self.assertEqual(r.status, 201, r)
            cls.calls[name] = r.json["call_id"]
        ext = {}
        for name in ("picked", "failed", "rnr", "disconnected"):
            c = self.wait_dispatched(self.calls[name])
            ext[name] = c["external_call_id"]
            self.assertTrue(ext[name].startswith("ext_"), c)
            self.assertEqual(c["attempts"][0]["external_call_id"], ext[name])
            self.assertIsNotNone(c["attempts"][0]["dispatched_at"])
        before = self.metrics()
        self.assertEqual(int(redis("GET", "active_calls_count")), in_flight())

        def ok(r, name, status):
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json, {"success": True, "call_id": self.calls[name],
                                      "status": status})

        # PICKED: unparsable timestamp and provider fields of its own (ignored).
        ok(self.callback({"call_id": self.calls["picked"], "status": "PICKED",
                          "call_duration": 42, "external_call_id": ext["picked"],
                          "timestamp": "not a time", "provider_extra": {"a": [1, 2]},
                          "x_vendor": "v"}), "picked", "PICKED")
        # FAILED, with a zoned timestamp.
        ok(self.callback({"call_id": self.calls["failed"], "status": "FAILED",
                          "external_call_id": ext["failed"],
                          "timestamp": "2025-01-24T10:35:00Z"}), "failed", "FAILED")
        # DISCONNECTED: the seed README's body (no external id) as written.
        ok(self.callback('''{
    "call_id": "%s",
    "status": "DISCONNECTED",
    "call_duration": 5
  }''' % self.calls["disconnected"]), "disconnected", "DISCONNECTED")
        # RNR, timestamp without a zone (read as UTC).
        ok(self.callback({"call_id": self.calls["rnr"], "status": "RNR", "call_duration": 0,
                          "timestamp": "2025-01-24T10:35:00"}), "rnr", "RNR")

        picked = self.wait_status(self.calls["picked"], "PICKED")
        self.assertEqual(picked["total_call_time"], 42)
        self.assertIsNone(picked["next_retry_at"])
        self.assertEqual(picked["attempts"][0]["status"], "PICKED")
        self.assertEqual(picked["attempts"][0]["call_duration"], 42)
        failed = self.wait_status(self.calls["failed"], "FAILED")
        self.assertIsNone(failed["next_retry_at"])
        disc = self.wait_status(self.calls["disconnected"], "DISCONNECTED")
        self.assertRegex(disc["next_retry_at"] or "", TS)
        self.assertEqual(disc["attempt_count"], 1)
        rnr = self.wait_status(self.calls["rnr"], "RNR")
        self.assertRegex(rnr["next_retry_at"] or "", TS)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.assertGreater(disc["next_retry_at"], now)
        self.assertGreater(rnr["next_retry_at"], now)

        # Four slots released (DISCONNECTED/RNR hold none while they wait).
        want = before["current_concurrent_calls"] - 4
        wait_until(lambda: self.metrics()["current_concurrent_calls"] == want, 10,
                   "four slots to be released")
        self.assertEqual(int(redis("GET", "active_calls_count")), want)
        self.assertEqual(in_flight(), want)
        after = self.metrics()
        b, a = before["recent_metrics"][0], after["recent_metrics"][0]
        for k, d in [("total_calls_picked", 1), ("total_calls_failed", 1),
                     ("total_calls_disconnected", 1), ("total_calls_rnr", 1),
                     ("total_call_duration", 42), ("total_calls_initiated", 0),
                     ("total_retries", 0)]:
            self.assertEqual(a[k] - b[k], d, k)
        self.assertAlmostEqual(a["avg_call_duration"],
                               a["total_call_duration"] / a["total_calls_picked"])
        cls.after_callbacks = after
        cls.snapshots = {n: self.get_call(self.calls[n])
                         for n in ("picked", "failed", "disconnected", "rnr")}

    def test_07_duplicate_and_late_callbacks_change_nothing(self):
        sent = [
            ("picked", {"status": "PICKED", "call_duration": 42}),  # duplicate
            ("picked", {"status": "FAILED"}),  # late, on a terminal call
            ("failed", {"status": "FAILED"}),  # duplicate
            ("failed", {"status": "PICKED", "call_duration": 9}),  # late
            ("disconnected", {"status": "DISCONNECTED", "call_duration": 5}),  # duplicate
            ("rnr", {"status": "PICKED", "call_duration": 3}),  # late, waiting for retry
        ]
        for name, body in sent:
            body = dict(body, call_id=self.calls[name])
            r = self.callback(body)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json, {"success": True, "call_id": self.calls[name],
                                      "status": body["status"]})
        for name in ("picked", "failed", "disconnected", "rnr"):
            wait_until(lambda: callbacks_settled(self.calls[name]), 30,
                       "callbacks of %s to be handled" % name)
        time.sleep(0.3)
        for name, snap in self.snapshots.items():
            self.assertEqual(self.get_call(self.calls[name]), snap, name)
        now = self.metrics()
        self.assertEqual(now["recent_metrics"][0], self.after_callbacks["recent_metrics"][0])
        self.assertEqual(now["current_concurrent_calls"],
                         self.after_callbacks["current_concurrent_calls"])

    def test_08_callback_errors(self):
        r = self.callback({"call_id": "call_unknown_1", "status": "PICKED"})
        self.assertError(r, 404, "not_found", MSG_NO_CALL)
        # The body is validated before the call is looked up: 400, not 404.
        for status in ("BUSY", "INITIATED", "RETRYING", "PROCESSING", "picked", "",
                       "CALL_STATUS_PICKED", 4, None):
            with self.subTest(status=status):
                r = self.callback({"call_id": "call_unknown_1", "status": status})
                self.assertError(r, 400, "bad_request", MSG_BAD_STATUS)
        r = self.callback({"call_id": self.calls["seed"], "status": "BUSY"})
        self.assertError(r, 400, "bad_request", MSG_BAD_STATUS)
        for bad in ({"call_duration": -1}, {"call_duration": "5"}, {"call_duration": 1.5},
                    {"timestamp": 12345}, {"external_call_id": "e" * 129},
                    {"call_id": "c" * 129}):
            body = {"call_id": self.calls["seed"], "status": "PICKED"}
            body.update(bad)
            r = self.callback(body)
            self.assertError(r, 400, "bad_request")
        r = self.callback({"status": "PICKED"})
        self.assertIn(r.status, (400, 404), r)
        self.assertError(r, r.status, "bad_request" if r.status == 400 else "not_found")
        # None of these touched the seed call.
        self.assertEqual(self.get_call(self.calls["seed"])["status"], "INITIATED")

    # ------------------------------------------------- initiate: 201 and 429

    def test_09_idempotency_key(self):
        number = fresh_number()
        key = {"Idempotency-Key": "rest-" + uuid.uuid4().hex}
        first = self.initiate(number, headers=key)
        self.assertEqual(first.status, 201, first)
        second = self.initiate(number, headers=key)
        self.assertEqual(second.status, 201, second)
        self.assertEqual(second.json["call_id"], first.json["call_id"])
        self.assertEqual(second.json, first.json)
        self.assertEqual(psql("SELECT count(*) FROM calls_calllog WHERE phone_number = '%s'"
                              % number), "1")
        r = self.initiate(fresh_number(), headers=key)
        self.assertError(r, 400, "bad_request", MSG_IDEMPOTENCY)
        type(self).calls["idempotent"] = first.json["call_id"]

    def test_10_duplicate_call(self):
        for number in ("+1234567890", "+1 (234) 567-890", "+1555000001"):
            r = self.initiate(number)
            self.assertError(r, 429, "too_many_requests", MSG_DUPLICATE,
                             details={"reason": "duplicate_call"})
            retry_after = r.header("Retry-After")
            self.assertIsNotNone(retry_after, r.headers)
            self.assertRegex(retry_after, r"^\d+$")
            self.assertTrue(0 < int(retry_after) <= 5 * 60, retry_after)

    # --------------------------------------------------- bad request table

    def test_11_bad_requests(self):
        cid = self.campaign
        long_name = "日" * 201
        ok_name = "é" * 100 + "😀" * 100
        cases = [
            # (what, method, path, body, token, status, code, field, message)
            ("broken JSON", "POST", "/api/v1/campaigns/", '{"name": "x",', TOKEN,
             400, "bad_request", None, None),
            ("JSON array body", "POST", "/api/v1/campaigns/", "[1, 2]", TOKEN,
             400, "bad_request", None, None),
            ("null body", "POST", "/api/v1/initiate-call/", "null", TOKEN,
             400, "bad_request", None, None),
            ("string body", "POST", "/api/v1/phone-numbers/", '"abc"', TOKEN,
             400, "bad_request", None, None),
            ("string campaign_id", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001", "campaign_id": "1"}, TOKEN,
             400, "bad_request", "campaign_id", None),
            ("float campaign_id", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001", "campaign_id": 1.5}, TOKEN,
             400, "bad_request", "campaign_id", None),
            ("string campaign_id (phone numbers)", "POST", "/api/v1/phone-numbers/",
             {"campaign_id": str(cid), "phone_numbers": ["+15550000001"]}, TOKEN,
             400, "bad_request", "campaign_id", None),
            ("true for a string", "POST", "/api/v1/campaigns/", {"name": True}, TOKEN,
             400, "bad_request", "name", None),
            ("true for phone_number", "POST", "/api/v1/initiate-call/",
             {"phone_number": True, "campaign_id": cid}, TOKEN,
             400, "bad_request", "phone_number", None),
            ("number in phone_numbers", "POST", "/api/v1/phone-numbers/",
             {"campaign_id": cid, "phone_numbers": [15550000001]}, TOKEN,
             400, "bad_request", None, None),
            ("string for a boolean", "POST", "/api/v1/campaigns/",
             {"name": "x", "is_active": "yes"}, TOKEN, 400, "bad_request", "is_active", None),
            ("null name", "POST", "/api/v1/campaigns/", {"name": None}, TOKEN,
             400, "bad_request", "name", None),
            ("missing name", "POST", "/api/v1/campaigns/", {}, TOKEN,
             400, "bad_request", "name", None),
            ("blank name", "POST", "/api/v1/campaigns/", {"name": "   "}, TOKEN,
             400, "bad_request", "name", None),
            ("null phone_number", "POST", "/api/v1/initiate-call/",
             {"phone_number": None, "campaign_id": cid}, TOKEN,
             400, "bad_request", None, "phone_number and campaign_id are required"),
            ("null campaign_id", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001", "campaign_id": None}, TOKEN,
             400, "bad_request", None, "phone_number and campaign_id are required"),
            ("missing campaign_id", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001"}, TOKEN,
             400, "bad_request", None, "phone_number and campaign_id are required"),
            ("unknown field (campaign)", "POST", "/api/v1/campaigns/",
             {"name": "x", "colour": "red"}, TOKEN, 400, "bad_request", "colour", None),
            ("unknown field (initiate)", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001", "campaign_id": cid, "priority": 1}, TOKEN,
             400, "bad_request", "priority", None),
            ("unknown field (phone numbers)", "POST", "/api/v1/phone-numbers/",
             {"campaign_id": cid, "phone_numbers": ["+15550000001"], "tag": "x"}, TOKEN,
             400, "bad_request", "tag", None),
            ("duplicate key", "POST", "/api/v1/campaigns/", '{"name": "a", "name": "b"}',
             TOKEN, 400, "bad_request", None, None),
            ("201 code points", "POST", "/api/v1/campaigns/", {"name": long_name}, TOKEN,
             400, "bad_request", "name", None),
            ("description of 2001", "POST", "/api/v1/campaigns/",
             {"name": "x", "description": "d" * 2001}, TOKEN,
             400, "bad_request", "description", None),
            ("phone_number of 65 bytes", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+1555" + " " * 55 + "12345", "campaign_id": cid}, TOKEN,
             400, "bad_request", "phone_number", MSG_BAD_PHONE),
            ("invalid UTF-8", "POST", "/api/v1/campaigns/", b'{"name": "\xff\xfe"}', TOKEN,
             400, "bad_request", None, None),
            ("initiate unknown campaign", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001", "campaign_id": 987654321}, TOKEN,
             404, "not_found", None, MSG_NO_CAMPAIGN),
            ("missing token", "GET", "/api/v1/campaigns/", None, None,
             401, "unauthorized", None, MSG_NO_TOKEN),
            ("empty token", "GET", "/api/v1/campaigns/", None, "",
             401, "unauthorized", None, MSG_NO_TOKEN),
            ("wrong token", "GET", "/api/v1/campaigns/", None, "dev-token-1234",
             401, "unauthorized", None, MSG_BAD_TOKEN),
            ("wrong token (POST)", "POST", "/api/v1/initiate-call/",
             {"phone_number": "+15550000001", "campaign_id": cid}, "wrong",
             401, "unauthorized", None, MSG_BAD_TOKEN),
            ("no token, bad body: 401 first", "POST", "/api/v1/campaigns/", "{", None,
             401, "unauthorized", None, MSG_NO_TOKEN),
            ("unknown path", "GET", "/api/v1/nothing-here/", None, TOKEN,
             404, "not_found", None, None),
            ("unknown path, no token: 404 first", "GET", "/api/v2/campaigns/", None, None,
             404, "not_found", None, None),
            ("unknown root", "GET", "/", None, TOKEN, 404, "not_found", None, None),
            ("wrong method", "DELETE", "/api/v1/campaigns/", None, TOKEN,
             405, "method_not_allowed", None, None),
            ("wrong method, no token: 405 first", "PUT", "/api/v1/metrics/", None, None,
             405, "method_not_allowed", None, None),
            ("GET callback", "GET", "/api/v1/callback/", None, TOKEN,
             405, "method_not_allowed", None, None),
            ("POST health", "POST", "/health/", "{}", None,
             405, "method_not_allowed", None, None),
            ("non-numeric id", "GET", "/api/v1/campaigns/abc/", None, TOKEN,
             400, "bad_request", None, None),
            ("fractional id", "GET", "/api/v1/campaigns/1.5/", None, TOKEN,
             400, "bad_request", None, None),
            ("huge id", "GET", "/api/v1/campaigns/99999999999999999999/", None, TOKEN,
             400, "bad_request", None, None),
            ("non-numeric limit", "GET", "/api/v1/campaigns/?limit=ten", None, TOKEN,
             400, "bad_request", None, None),
            ("non-numeric offset", "GET", "/api/v1/campaigns/?offset=x", None, TOKEN,
             400, "bad_request", None, None),
            ("negative offset", "GET", "/api/v1/campaigns/?offset=-1", None, TOKEN,
             400, "bad_request", None, None),
            ("negative limit", "GET", "/api/v1/campaigns/?limit=-5", None, TOKEN,
             400, "bad_request", None, None),
        ]
        failures = []
        for what, method, path, body, token, status, code, field, message in cases:
            r = http(method, path, body, token=token)
            try:
                self.assertError(r, status, code, message, field)
            except AssertionError as e:
                failures.append("%s: %s" % (what, e))
        self.assertEqual(failures, [], "\n".join(failures))

        # Unicode names are fine: stored and returned exactly (trimmed).
        for name in ("Кампания 日本語 ✓", ok_name, "é" * 200, "😀" * 200, "  spaced  "):
            r = http("POST", "/api/v1/campaigns/", {"name": name, "description": "ü" * 2000})
            self.assertEqual(r.status, 201, (name, r))
            self.assertEqual(r.json["name"], name.strip())
            self.assertEqual(r.json["description"], "ü" * 2000)
            got = http("GET", "/api/v1/campaigns/%d/" % r.json["id"])
            self.assertEqual(got.json["name"], name.strip())
        r = http("POST", "/api/v1/campaigns/", {"name": "n", "description": None})
        self.assertEqual(r.status, 201, r)
        self.assertIsNone(r.json["description"])
        # A 64-byte phone_number that normalises to E.164 is accepted.
        number = fresh_number("+1333")
        padded = number[:4] + " " * (64 - len(number)) + number[4:]
        self.assertEqual(len(padded.encode()), 64)
        r = self.initiate(padded)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["phone_number"], number)

    def test_12_payload_too_large(self):
        def raw_post(token, declared, send, path="/api/v1/campaigns/"):
            """POST declaring Content-Length `declared`, of which `send` body
            bytes are sent (by a thread, while the answer is read, as curl
            does); returns (status, parsed body) of the answer."""
            s = socket.create_connection((HOST, PORT), timeout=10)
            head = "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n" \
                   "Content-Length: %d\r\n" % (path, HOST, PORT, declared)
            if token:
                head += "X-Auth-Token: %s\r\n" % token
            payload = head.encode() + b"\r\n" + b'{"name": "' + b"x" * send

            def sender():
                try:
                    s.sendall(payload)
                except OSError:
                    pass  # the server answered and closed: expected
            t = threading.Thread(target=sender)
            t.start()
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                while len(rest) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                return status, json.loads(rest)
            finally:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # stops the sender
                except OSError:
                    pass  # already reset by the server
                s.close()
                t.join()

        two_mib = 2 * 1024 * 1024
        for token in (TOKEN, None):  # 413 comes before 401
            # Only 4 KiB of the declared 2 MiB are sent: answered anyway.
            status, body = raw_post(token, two_mib, 4096)
            self.assertEqual(status, 413, body)
            self.assertEqual(body["error"]["code"], "payload_too_large", body)
            self.assertIsInstance(body["error"]["details"], dict)
            self.assertIsInstance(body["error"]["message"], str)
        # The whole 2 MiB sent while reading: still 413.
        status, body = raw_post(TOKEN, two_mib, two_mib - 12)
        self.assertEqual(status, 413, body)
        self.assertEqual(body["error"]["code"], "payload_too_large", body)
        # Exactly 1 MiB is allowed; one byte more is not.
        limit = 1024 * 1024
        prefix, suffix = b'{"name": "one mebibyte"', b"}"
        body = prefix + b" " * (limit - len(prefix) - len(suffix)) + suffix
        self.assertEqual(len(body), limit)
        r = http("POST", "/api/v1/campaigns/", body)
        self.assertEqual(r.status, 201, r)
        status, body = raw_post(TOKEN, limit + 1, 100)
        self.assertEqual(status, 413, body)
        self.assertEqual(body["error"]["code"], "payload_too_large", body)

    def test_13_cors_openapi_health(self):
        for path in ("/api/v1/campaigns/", "/api/v1/initiate-call/", "/api/v1/callback/",
                     "/api/v1/calls/%s/" % self.calls["seed"]):
            r = http("OPTIONS", path, token=None,
                     headers={"Origin": "http://example.com",
                              "Access-Control-Request-Method": "POST",
                              "Access-Control-Request-Headers": "content-type,x-auth-token"})
            self.assertIn(r.status, (200, 204), (path, r))
            self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
            methods = {m.strip() for m in r.header("Access-Control-Allow-Methods").split(",")}
            self.assertTrue({"GET", "POST", "PUT", "OPTIONS"} <= methods, methods)
            allowed = {h.strip().lower()
                       for h in r.header("Access-Control-Allow-Headers").split(",")}
            self.assertTrue({"content-type", "x-auth-token"} <= allowed, allowed)
        # CORS headers on ordinary answers and errors too.
        for r in (http("GET", "/api/v1/metrics/"), http("GET", "/api/v1/metrics/", token=None)):
            self.assertEqual(r.header("Access-Control-Allow-Origin"), "*", r.headers)
        r = http("GET", "/api/v1/openapi.json", token=None)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.header("Content-Type").startswith("application/json"))
        self.assertIsInstance(r.json, dict)
        self.assertTrue(str(r.json.get("openapi", "")).startswith("3."), r.json.get("openapi"))
        self.assertIn("paths", r.json)
        for path in ("/health/", "/health"):
            r = http("GET", path, token=None)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json, {"status": "healthy"})
        r = http("GET", "/health/", token="wrong")  # a token is not even looked at
        self.assertEqual(r.status, 200, r)

    # ---------------------------------------------------------------- load

    def test_14_five_hundred_concurrent_requests(self):
        cid = self.campaign
        load_campaign = self.new_campaign("load")
        seed_call = self.calls["seed"]
        picked_call = self.calls["picked"]
        start = threading.Barrier(50)

        def one(t, i):
            k = (t + i) % 10
            if k == 0:
                r = http("GET", "/api/v1/campaigns/%d/" % cid)
                return r.status == 200 and r.json["id"] == cid, r
            if k == 1:
                r = http("GET", "/api/v1/metrics/")
                return (r.status == 200 and len(r.json["recent_metrics"]) == 7
                        and r.json["max_concurrent_calls"] == MAX_CALLS), r
            if k == 2:
                name = "load %d-%d" % (t, i)
                r = http("POST", "/api/v1/campaigns/", {"name": name})
                return r.status == 201 and r.json["name"] == name, r
            if k == 3:
                number = "+1222%03d%04d" % (t, i)
                r = http("POST", "/api/v1/phone-numbers/",
                         {"campaign_id": load_campaign, "phone_numbers": [number]})
                return (r.status == 201 and r.json["added_count"] == 1
                        and r.json["phone_numbers"] == [number]), r
            if k == 4:
                r = http("GET", "/api/v1/calls/%s/" % seed_call)
                return r.status == 200 and r.json["call_id"] == seed_call, r
            if k == 5:
                r = http("POST", "/api/v1/initiate-call/",
                         {"phone_number": "+1234567890", "campaign_id": cid})
                return (r.status == 429
                        and r.json["error"]["details"] == {"reason": "duplicate_call"}), r
            if k == 6:
                r = http("PUT", "/api/v1/callback/",
                         {"call_id": picked_call, "status": "PICKED", "call_duration": 42})
                return r.status == 200 and r.json["call_id"] == picked_call, r
            if k == 7:
                r = http("GET", "/api/v1/campaigns/?limit=5")
                return r.status == 200 and isinstance(r.json, list) and len(r.json) == 5, r
            if k == 8:
                r = http("POST", "/api/v1/initiate-call/",
                         {"phone_number": "bad", "campaign_id": cid})
                return (r.status == 400 and r.json["error"]["message"] == MSG_BAD_PHONE), r
            r = http("GET", "/api/v1/metrics/", token="nope")
            return (r.status == 401 and r.json["error"]["message"] == MSG_BAD_TOKEN), r

        def worker(t):
            start.wait()
            bad = []
            for i in range(10):
                try:
                    good, r = one(t, i)
                    if not good:
                        bad.append("thread %d op %d: %r" % (t, (t + i) % 10, r))
                except Exception as e:  # noqa: BLE001 - reported below
                    bad.append("thread %d op %d: %r" % (t, (t + i) % 10, e))
            return bad

        with concurrent.futures.ThreadPoolExecutor(50) as ex:
            bad = sum(ex.map(worker, range(50)), [])
        self.assertEqual(bad, [], "\n".join(bad[:20]))
        r = http("GET", "/api/v1/campaigns/%d/" % load_campaign)
        self.assertEqual(r.json["phone_count"], 50, r)  # one number per thread

        # 500 GET /api/v1/metrics/ at once.
        gate = threading.Barrier(500)

        def metrics(_):
            gate.wait()
            try:
                r = http("GET", "/api/v1/metrics/", timeout=60)
            except Exception as e:  # noqa: BLE001
                return repr(e)
            if r.status != 200 or len(r.json["recent_metrics"]) != 7:
                return repr(r)
            return None

        with concurrent.futures.ThreadPoolExecutor(500) as ex:
            errors = [e for e in ex.map(metrics, range(500)) if e is not None]
        self.assertEqual(errors, [], "\n".join(errors[:20]))
        # The PICKED call got 50 late callbacks and is still what it was.
        wait_until(lambda: callbacks_settled(picked_call), 30, "late callbacks to be handled")
        self.assertEqual(self.get_call(picked_call), self.snapshots["picked"])

    def test_15_concurrency_limit(self):
        free = MAX_CALLS - in_flight()
        self.assertGreater(free, 0)
        numbers = [fresh_number("+1777") for _ in range(free + 10)]
        barrier = threading.Barrier(len(numbers))

        def go(number):
            barrier.wait()
            return self.initiate(number)

        with concurrent.futures.ThreadPoolExecutor(len(numbers)) as ex:
            results = list(ex.map(go, numbers))
        created = [r for r in results if r.status == 201]
        refused = [r for r in results if r.status != 201]
        self.assertEqual(len(created), free, [r for r in refused if r.status != 429])
        self.assertEqual(len(refused), 10)
        for r in refused:
            self.assertError(r, 429, "too_many_requests", MSG_LIMIT,
                             details={"reason": "concurrency_limit"})
        self.assertEqual(in_flight(), MAX_CALLS)
        self.assertEqual(int(redis("GET", "active_calls_count")), MAX_CALLS)
        m = self.metrics()
        self.assertEqual(m["current_concurrent_calls"], MAX_CALLS)
        self.assertEqual(m["system_status"], "at_capacity")
        self.assertEqual(m["recent_metrics"][0]["peak_concurrent_calls"], MAX_CALLS)
        r = self.initiate(fresh_number("+1777"))
        self.assertError(r, 429, "too_many_requests", MSG_LIMIT,
                         details={"reason": "concurrency_limit"})
        # A duplicate is still reported as a duplicate at capacity.
        r = self.initiate("+1234567890")
        self.assertEqual(r.json["error"]["details"], {"reason": "duplicate_call"}, r)

    # ---------------------------------------------------------------- logs

    def test_16_api_log(self):
        marker = "/api/v1/log-marker-%s/" % uuid.uuid4().hex
        self.assertEqual(http("GET", marker).status, 404)
        self.assertEqual(http("GET", "/api/v1/campaigns/%d/" % self.campaign).status, 200)

        def api_log():
            """api.log and any rotated backups of it."""
            text = ""
            for name in sorted(glob.glob(os.path.join(LOG_DIR, "api.log*"))):
                with open(name, encoding="utf-8", errors="replace") as f:
                    text += f.read()
            return text

        # "Incoming Request: <METHOD> <path>", the status on the same line.
        def logged(method, path, status):
            return re.compile(r"Incoming Request: %s %s .*\bstatus\W{0,3}%s\b"
                              % (method, re.escape(path), status))

        expected = [
            logged("GET", marker, "404"),
            logged("GET", "/api/v1/campaigns/%d/" % self.campaign, "200"),
            logged("POST", "/api/v1/campaigns/", "201"),
            logged("POST", "/api/v1/campaigns/", "413"),
            logged("POST", "/api/v1/initiate-call/", "429"),
            logged("PUT", "/api/v1/callback/", "200"),
            logged("GET", "/api/v1/metrics/", "401"),
            logged("OPTIONS", "/api/v1/campaigns/", "20[04]"),
        ]
        try:
            wait_until(lambda: all(p.search(api_log()) for p in expected), 10,
                       "request lines in api.log")
        except AssertionError:
            text = api_log()
            self.fail("api.log lacks %s" % [p.pattern for p in expected if not p.search(text)])
        lines = [line for line in api_log().splitlines() if "Incoming Request: " in line]
        self.assertGreater(len(lines), 500)
        for line in lines:
            self.assertRegex(line, r"Incoming Request: [A-Z]+ /\S* .*\bstatus\W{0,3}\d+\b", line)
        # No secret in any log file (nor in a rotated one).
        for name in sorted(glob.glob(os.path.join(LOG_DIR, "*.log*"))):
            with open(name, "rb") as f:
                self.assertNotIn(TOKEN.encode(), f.read(), name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
