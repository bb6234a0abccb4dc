"""Signed provider callbacks (CALLBACK_SIGNING_SECRET): the mock signs and its
callbacks apply; unsigned, tampered, stale or replayed-with-another-body
callbacks are refused before anything is recorded, by the gateway and again
by the server (a direct gRPC call with a token but no signature)."""
import hashlib
import hmac
import json
import os
import time
import unittest

import grpc

from grpc_env import AUTH, load_stubs, psql, target
from rest_env import request, wait_until

pb, pb_grpc = load_stubs()
SECRET = os.environ["CALLBACK_SIGNING_SECRET"]


def signed_headers(body, ts=None, secret=SECRET):
    ts = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Timestamp": ts, "X-Signature": "sha256=" + mac}


class Signed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        wait_until(lambda: request("GET", "/health/", token=None)[0] == 200, 30, "health")
        status, body, _ = request("POST", "/api/v1/campaigns/", {"name": "Signed"})
        assert status == 201, body
        cls.campaign = body["id"]

    def initiate(self, number):
        status, body, _ = request("POST", "/api/v1/initiate-call/",
                                  {"phone_number": number, "campaign_id": self.campaign})
        self.assertEqual(status, 201, body)
        return body["call_id"]

    def test_mock_signs_and_callbacks_apply(self):
        call_id = self.initiate("+15550100001")
        wait_until(lambda: psql("SELECT status FROM calls_calllog WHERE call_id = '%s'" % call_id)
                   in ("PICKED", "DISCONNECTED", "RNR", "FAILED"), 60, "the signed callback")

    def test_refused_without_a_valid_signature(self):
        call_id = self.initiate("+15550100002")
        # A duration the mock never sends marks the forged callbacks.
        body = json.dumps({"call_id": call_id, "status": "PICKED",
                           "call_duration": 77777}).encode()
        cases = {
            "unsigned": {},
            "wrong secret": signed_headers(body, secret="not-the-secret"),
            "stale timestamp": signed_headers(body, ts=int(time.time()) - 3600),
            "signature of another body": signed_headers(body.replace(b"PICKED", b"FAILED")),
            "garbage signature": {"X-Timestamp": str(int(time.time())), "X-Signature": "sha256=zz"},
        }
        forged = "SELECT count(*) FROM calls_callback WHERE call_duration = 77777"
        before = psql(forged)
        for name, headers in cases.items():
            status, resp, _ = request("PUT", "/api/v1/callback/", raw=body, headers=headers)
            self.assertEqual(status, 401, name)
            self.assertEqual(resp["error"]["message"], "Invalid callback signature.", name)
        # Nothing was recorded.
        self.assertEqual(psql(forged), before)
        # Upper-case hex is the same signature.
        headers = signed_headers(body)
        headers["X-Signature"] = "sha256=" + headers["X-Signature"][7:].upper()
        status, resp, _ = request("PUT", "/api/v1/callback/", raw=body, headers=headers)
        self.assertEqual(status, 200, resp)

    def test_server_checks_too(self):
        call_id = self.initiate("+15550100003")
        with grpc.insecure_channel(target()) as channel:
            stub = pb_grpc.CallManagerStub(channel)
            with self.assertRaises(grpc.RpcError) as ctx:
                stub.ProcessCallback(pb.ProcessCallbackRequest(
                    call_id=call_id, status=pb.CALL_STATUS_PICKED), metadata=AUTH)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertEqual(ctx.exception.details(), "Invalid callback signature.")
            # A valid signature over a body that says something else.
            body = json.dumps({"call_id": call_id, "status": "FAILED"}).encode()
            h = signed_headers(body)
            md = AUTH + (("x-signature", h["X-Signature"]), ("x-timestamp", h["X-Timestamp"]),
                         ("x-body-sha256", hashlib.sha256(body).hexdigest()),
                         ("x-callback-body-bin", body))
            with self.assertRaises(grpc.RpcError) as ctx:
                stub.ProcessCallback(pb.ProcessCallbackRequest(
                    call_id=call_id, status=pb.CALL_STATUS_PICKED), metadata=md)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            # The same, matching: accepted.
            resp = stub.ProcessCallback(pb.ProcessCallbackRequest(
                call_id=call_id, status=pb.CALL_STATUS_FAILED), metadata=md)
            self.assertTrue(resp.success)


if __name__ == "__main__":
    unittest.main(verbosity=2)
