"""The seed README's retry scenarios end to end: a DISCONNECTED callback sent
by hand, the scheduler retrying the call (`Retrying call <id> (attempt 2)`
in app.log and calls.log), and after the third DISCONNECTED the call FAILED
with `Max retry attempts reached (3)`."""
import os
import unittest

from grpc_env import psql
from rest_env import request, wait_until

LOG_DIR = os.environ.get("LOG_DIR", "var/test/logs")


def call(call_id):
    status, body, _ = request("GET", "/api/v1/calls/%s/" % call_id)
    assert status == 200, body
    return body


def read_log(name):
    with open(os.path.join(LOG_DIR, name), encoding="utf-8", errors="replace") as f:
        return f.read()


class Retry(unittest.TestCase):
    def wait_dispatched(self, call_id, attempt):
        wait_until(lambda: (lambda c: c["status"] == "INITIATED" and c["attempt_count"] == attempt
                            and c["attempts"][-1]["external_call_id"] is not None)(call(call_id)),
                   60, "attempt %d of %s to be dispatched" % (attempt, call_id))

    def disconnect(self, call_id):
        status, body, _ = request("PUT", "/api/v1/callback/", {
            "call_id": call_id, "status": "DISCONNECTED", "call_duration": 5})
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"success": True, "call_id": call_id, "status": "DISCONNECTED"})

    def test_scenario_1_and_2(self):
        wait_until(lambda: request("GET", "/health/", token=None)[0] == 200, 30, "health")
        status, campaign, _ = request("POST", "/api/v1/campaigns/", {"name": "Retries"})
        self.assertEqual(status, 201)
        status, body, _ = request("POST", "/api/v1/initiate-call/",
                                  {"phone_number": "+1555000001", "campaign_id": campaign["id"]})
        self.assertEqual(status, 201, body)
        call_id = body["call_id"]

        for attempt in (1, 2, 3):
            self.wait_dispatched(call_id, attempt)
            self.disconnect(call_id)
            if attempt < 3:
                line = "Retrying call %s (attempt %d)" % (call_id, attempt + 1)
                wait_until(lambda: line in read_log("app.log"), 60, line)
                self.assertIn(line, read_log("calls.log"))
                self.assertIn("calls.scheduler - " + line, read_log("app.log"))

        wait_until(lambda: call(call_id)["status"] == "FAILED", 60, "the call to fail")
        final = call(call_id)
        self.assertEqual(final["attempt_count"], 3)
        self.assertEqual(final["error_message"], "Max retry attempts reached (3)")
        self.assertIsNone(final["next_retry_at"])
        self.assertEqual([a["attempt"] for a in final["attempts"]], [1, 2, 3])
        self.assertEqual([a["status"] for a in final["attempts"]], ["DISCONNECTED"] * 3)
        # The seed README's psql check.
        row = psql("SELECT call_id, status, attempt_count, error_message FROM calls_calllog "
                   "WHERE phone_number='+1555000001';")
        self.assertEqual(row, "%s|FAILED|3|Max retry attempts reached (3)" % call_id)
        status, m, _ = request("GET", "/api/v1/metrics/")
        today = m["recent_metrics"][0]
        self.assertEqual(today["total_calls_initiated"], 1)
        self.assertEqual(today["total_retries"], 2)
        self.assertEqual(today["total_calls_disconnected"], 2)
        self.assertEqual(today["total_calls_failed"], 1)
        self.assertEqual(m["current_concurrent_calls"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
