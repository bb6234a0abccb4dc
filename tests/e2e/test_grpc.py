"""Black-box tests of `ccm server` from Python (Debian's python3-grpcio):
every RPC's success and documented errors, health, reflection, races and
bad input. Run by tests/e2e/test_grpc.sh against a live server."""
import concurrent.futures
import os
import threading
import unittest

import grpc

from grpc_env import AUTH, load_stubs, psql, redis, target

pb, pb_grpc = load_stubs()
CM = "/callmanager.v1.CallManager/"
MAX_CALLS = int(os.environ.get("MAX_CONCURRENT_CALLS", "50"))

_counter = [0]
_counter_lock = threading.Lock()


def fresh_number(prefix="+1555"):
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    return "%s%07d" % (prefix, os.getpid() % 1000 * 10000 + n)


def trailing(err):
    return dict(err.trailing_metadata() or ())


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(target())
        grpc.channel_ready_future(cls.channel).result(timeout=10)
        cls.stub = pb_grpc.CallManagerStub(cls.channel)
        cls.campaign = cls.stub.CreateCampaign(
            pb.CreateCampaignRequest(name="E2E campaign"), metadata=AUTH).campaign

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def assertCode(self, ctx, code):
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())


class Campaigns(Base):
    def test_create_and_get(self):
        c = self.stub.CreateCampaign(
            pb.CreateCampaignRequest(name="  Marketing Campaign Q1  ",
                                     description="Cold calling for Q1 leads"),
            metadata=AUTH).campaign
        self.assertGreater(c.id, 0)
        self.assertEqual(c.name, "Marketing Campaign Q1")
        self.assertTrue(c.is_active)
        self.assertTrue(c.HasField("description"))
        self.assertRegex(c.created_at, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        got = self.stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=AUTH).campaign
        self.assertEqual(got.name, c.name)
        self.assertEqual(got.phone_count, 0)

    def test_create_without_description_is_null(self):
        c = self.stub.CreateCampaign(pb.CreateCampaignRequest(name="x"), metadata=AUTH).campaign
        self.assertFalse(c.HasField("description"))

    def test_same_name_twice_is_fine(self):
        for _ in range(2):
            self.stub.CreateCampaign(pb.CreateCampaignRequest(name="dup name"), metadata=AUTH)

    def test_name_validation(self):
        for name in ["", "   ", "x" * 201]:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.stub.CreateCampaign(pb.CreateCampaignRequest(name=name), metadata=AUTH)
            self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertEqual(trailing(ctx.exception).get("ccm-error-field"), "name")
        # 200 code points of multi-byte text is fine.
        self.stub.CreateCampaign(pb.CreateCampaignRequest(name="é" * 200), metadata=AUTH)

    def test_description_too_long(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.CreateCampaign(
                pb.CreateCampaignRequest(name="n", description="d" * 2001), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)

    def test_inactive_campaign_hidden(self):
        c = self.stub.CreateCampaign(pb.CreateCampaignRequest(name="off", is_active=False),
                                     metadata=AUTH).campaign
        self.assertFalse(c.is_active)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(ctx.exception.details(), "Campaign not found or inactive.")
        ids = [x.id for x in self.stub.ListCampaigns(pb.ListCampaignsRequest(),
                                                     metadata=AUTH).campaigns]
        self.assertNotIn(c.id, ids)

    def test_list_ordered_with_limit_offset(self):
        all_ids = [x.id for x in self.stub.ListCampaigns(pb.ListCampaignsRequest(),
                                                         metadata=AUTH).campaigns]
        self.assertEqual(all_ids, sorted(all_ids))
        page = [x.id for x in self.stub.ListCampaigns(pb.ListCampaignsRequest(limit=2, offset=1),
                                                      metadata=AUTH).campaigns]
        self.assertEqual(page, all_ids[1:3])
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.ListCampaigns(pb.ListCampaignsRequest(offset=-1), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)

    def test_get_unknown(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.GetCampaign(pb.GetCampaignRequest(id=999999999), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.NOT_FOUND)


class PhoneNumbers(Base):
    def test_add_normalise_duplicates_errors(self):
        c = self.stub.CreateCampaign(pb.CreateCampaignRequest(name="numbers"),
                                     metadata=AUTH).campaign
        r = self.stub.AddPhoneNumbers(pb.AddPhoneNumbersRequest(
            campaign_id=c.id,
            phone_numbers=["+1234567890", "+1 (234) 567-8901", "+1234567890", "abc",
                           "+١٢٣٤٥٦٧٨٩", "+1234567892"]), metadata=AUTH)
        self.assertTrue(r.success)
        self.assertEqual(list(r.phone_numbers), ["+1234567890", "+12345678901", "+1234567892"])
        self.assertEqual(r.added_count, 3)
        self.assertEqual(r.duplicate_count, 1)
        self.assertEqual(len(r.errors), 2)
        self.assertIn("Invalid phone number: abc", r.errors)
        again = self.stub.AddPhoneNumbers(pb.AddPhoneNumbersRequest(
            campaign_id=c.id, phone_numbers=["+1234567890"]), metadata=AUTH)
        self.assertEqual(again.added_count, 0)
        self.assertEqual(again.duplicate_count, 1)
        got = self.stub.GetCampaign(pb.GetCampaignRequest(id=c.id), metadata=AUTH).campaign
        self.assertEqual(got.phone_count, 3)

    def test_limits(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.AddPhoneNumbers(pb.AddPhoneNumbersRequest(campaign_id=self.campaign.id),
                                      metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(ctx.exception.details(), "phone_numbers must contain 1 to 10000 entries")
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.AddPhoneNumbers(pb.AddPhoneNumbersRequest(
                campaign_id=self.campaign.id,
                phone_numbers=["+1%09d" % i for i in range(10001)]), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)

    def test_ten_thousand_in_one_call(self):
        c = self.stub.CreateCampaign(pb.CreateCampaignRequest(name="bulk"), metadata=AUTH).campaign
        nums = ["+44%09d" % i for i in range(10000)]
        r = self.stub.AddPhoneNumbers(pb.AddPhoneNumbersRequest(campaign_id=c.id,
                                                                phone_numbers=nums),
                                      metadata=AUTH, timeout=30)
        self.assertEqual(r.added_count, 10000)
        self.assertEqual(list(r.phone_numbers), nums)

    def test_unknown_campaign(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.AddPhoneNumbers(pb.AddPhoneNumbersRequest(
                campaign_id=987654321, phone_numbers=["+1234567890"]), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.NOT_FOUND)


class Calls(Base):
    def initiate(self, number, campaign=None, metadata=AUTH):
        return self.stub.InitiateCall(pb.InitiateCallRequest(
            phone_number=number, campaign_id=campaign or self.campaign.id), metadata=metadata)

    def test_initiate_and_get_call(self):
        number = fresh_number()
        r = self.initiate(number)
        self.assertTrue(r.success)
        self.assertEqual(r.status, pb.CALL_STATUS_INITIATED)
        self.assertEqual(r.phone_number, number)
        self.assertEqual(r.attempt_count, 1)
        self.assertEqual(r.max_attempts, 3)
        self.assertEqual(r.campaign_name, "E2E campaign")
        self.assertRegex(r.call_id, r"^call_%d_\%s_\d{14}_[0-9a-f]{8}$" % (self.campaign.id, number))
        call = self.stub.GetCall(pb.GetCallRequest(call_id=r.call_id), metadata=AUTH).call
        self.assertEqual(call.status, pb.CALL_STATUS_INITIATED)
        self.assertEqual(len(call.attempts), 1)
        self.assertEqual(call.attempts[0].attempt, 1)
        self.assertFalse(call.HasField("next_retry_at"))
        # The outbox holds the initiate event, written with the call.
        self.assertEqual(psql("SELECT count(*) FROM calls_outbox WHERE message_key = '%s'"
                              % r.call_id), "1")
        self.assertEqual(redis("EXISTS", "call_lock:" + number), "1")

    def test_normalised_number(self):
        r = self.initiate("+1 (555) 010-%04d" % (os.getpid() % 10000))
        self.assertEqual(r.phone_number, "+1555010%04d" % (os.getpid() % 10000))

    def test_validation_order(self):
        cases = [
            (pb.InitiateCallRequest(campaign_id=self.campaign.id),
             grpc.StatusCode.INVALID_ARGUMENT, "phone_number and campaign_id are required"),
            (pb.InitiateCallRequest(phone_number="+1234567890"),
             grpc.StatusCode.INVALID_ARGUMENT, "phone_number and campaign_id are required"),
            (pb.InitiateCallRequest(phone_number="invalid", campaign_id=999999999),
             grpc.StatusCode.INVALID_ARGUMENT,
             "Invalid phone number format. Must start with + and contain digits."),
            (pb.InitiateCallRequest(phone_number=fresh_number(), campaign_id=999999999),
             grpc.StatusCode.NOT_FOUND, "Campaign not found or inactive."),
        ]
        for req, code, message in cases:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.stub.InitiateCall(req, metadata=AUTH)
            self.assertCode(ctx, code)
            self.assertEqual(ctx.exception.details(), message)

    def test_duplicate(self):
        number = fresh_number()
        self.initiate(number)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.initiate(number)
        self.assertCode(ctx, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(ctx.exception.details(),
                         "A call to this number is already in progress or was made recently.")
        md = trailing(ctx.exception)
        self.assertEqual(md.get("ccm-error-reason"), "duplicate_call")
        self.assertGreater(int(md.get("retry-after", "0")), 0)

    def test_duplicate_enforced_by_database_without_redis_lock(self):
        number = fresh_number()
        self.initiate(number)
        redis("DEL", "call_lock:" + number)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.initiate(number)
        self.assertCode(ctx, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(trailing(ctx.exception).get("ccm-error-reason"), "duplicate_call")

    def test_idempotency_key(self):
        number = fresh_number()
        md = AUTH + (("idempotency-key", "key-" + number),)
        first = self.initiate(number, metadata=md)
        second = self.initiate(number, metadata=md)
        self.assertEqual(first.call_id, second.call_id)
        self.assertEqual(psql("SELECT count(*) FROM calls_calllog WHERE phone_number = '%s'"
                              % number), "1")
        with self.assertRaises(grpc.RpcError) as ctx:
            self.initiate(fresh_number(), metadata=md)
        self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(ctx.exception.details(), "Idempotency-Key reused with a different request.")

    def test_idempotency_key_concurrent(self):
        number = fresh_number()
        md = AUTH + (("idempotency-key", "conc-" + number),)
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            results = list(ex.map(lambda _: self.initiate(number, metadata=md), range(10)))
        self.assertEqual(len({r.call_id for r in results}), 1)

    def test_get_call_unknown(self):
        for call_id in ["nope", "", "x" * 200]:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.stub.GetCall(pb.GetCallRequest(call_id=call_id), metadata=AUTH)
            self.assertCode(ctx, grpc.StatusCode.NOT_FOUND)
            self.assertEqual(ctx.exception.details(), "Call not found.")


class Callbacks(Base):
    def test_callback_recorded(self):
        r = self.stub.InitiateCall(pb.InitiateCallRequest(phone_number=fresh_number(),
                                                          campaign_id=self.campaign.id),
                                   metadata=AUTH)
        resp = self.stub.ProcessCallback(pb.ProcessCallbackRequest(
            call_id=r.call_id, status=pb.CALL_STATUS_DISCONNECTED, call_duration=5,
            timestamp="not a time"), metadata=AUTH)
        self.assertTrue(resp.success)
        self.assertEqual(resp.status, pb.CALL_STATUS_DISCONNECTED)
        self.assertEqual(psql("SELECT status || ',' || call_duration || ',' || "
                              "coalesce(outcome_at::text, 'null') FROM calls_callback "
                              "WHERE call_id = '%s'" % r.call_id), "DISCONNECTED,5,null")
        self.assertEqual(psql("SELECT count(*) FROM calls_outbox WHERE message_key = '%s'"
                              % r.call_id), "2")
        # Duplicate callbacks are accepted.
        self.stub.ProcessCallback(pb.ProcessCallbackRequest(
            call_id=r.call_id, status=pb.CALL_STATUS_DISCONNECTED,
            timestamp="2025-01-24T10:35:00"), metadata=AUTH)

    def test_callback_errors(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.ProcessCallback(pb.ProcessCallbackRequest(
                call_id="call_unknown", status=pb.CALL_STATUS_PICKED), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(ctx.exception.details(), "Call not found.")
        for status in [pb.CALL_STATUS_INITIATED, pb.CALL_STATUS_RETRYING, 0, 42]:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.stub.ProcessCallback(pb.ProcessCallbackRequest(
                    call_id="call_unknown", status=status), metadata=AUTH)
            self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertEqual(ctx.exception.details(),
                             "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED")
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.ProcessCallback(pb.ProcessCallbackRequest(
                call_id="c", status=pb.CALL_STATUS_PICKED, call_duration=-1), metadata=AUTH)
        self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)


class Metrics(Base):
    def test_metrics(self):
        m = self.stub.GetMetrics(pb.GetMetricsRequest(), metadata=AUTH)
        self.assertEqual(m.max_concurrent_calls, MAX_CALLS)
        self.assertEqual(len(m.recent_metrics), 7)
        dates = [d.date for d in m.recent_metrics]
        self.assertEqual(dates, sorted(dates, reverse=True))
        self.assertEqual(m.dependencies.database, "ok")
        self.assertEqual(m.dependencies.redis, "ok")
        self.assertIn(m.system_status, ("healthy", "at_capacity", "degraded"))
        self.assertGreaterEqual(m.recent_metrics[0].total_calls_initiated, 1)


class Auth(Base):
    def test_missing_and_invalid_token(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.GetMetrics(pb.GetMetricsRequest())
        self.assertCode(ctx, grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(ctx.exception.details(),
                         "Authentication credentials were not provided or are invalid.")
        for token in ["wrong", "dev-token-1234", "dev-token-123456"]:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.stub.GetMetrics(pb.GetMetricsRequest(), metadata=(("x-auth-token", token),))
            self.assertCode(ctx, grpc.StatusCode.UNAUTHENTICATED)
            self.assertEqual(ctx.exception.details(), "Invalid authentication token.")

    def test_every_rpc_requires_a_token(self):
        for method, req in [("CreateCampaign", pb.CreateCampaignRequest(name="x")),
                            ("ListCampaigns", pb.ListCampaignsRequest()),
                            ("GetCampaign", pb.GetCampaignRequest(id=1)),
                            ("AddPhoneNumbers", pb.AddPhoneNumbersRequest()),
                            ("InitiateCall", pb.InitiateCallRequest()),
                            ("ProcessCallback", pb.ProcessCallbackRequest()),
                            ("GetCall", pb.GetCallRequest()),
                            ("GetMetrics", pb.GetMetricsRequest())]:
            with self.assertRaises(grpc.RpcError) as ctx:
                getattr(self.stub, method)(req)
            self.assertCode(ctx, grpc.StatusCode.UNAUTHENTICATED)


class HealthAndReflection(Base):
    def call_raw(self, method, payload):
        fn = self.channel.unary_unary(method, request_serializer=None,
                                      response_deserializer=None)
        return fn(payload, timeout=5)

    def test_health(self):
        # HealthCheckRequest{service="callmanager.v1.CallManager"} by hand (field 1).
        name = b"callmanager.v1.CallManager"
        resp = self.call_raw("/grpc.health.v1.Health/Check", b"\x0a" + bytes([len(name)]) + name)
        self.assertEqual(resp, b"\x08\x01")  # status SERVING
        resp = self.call_raw("/grpc.health.v1.Health/Check", b"")
        self.assertIn(resp, (b"\x08\x01", b"\x08\x02"))
        with self.assertRaises(grpc.RpcError) as ctx:
            self.call_raw("/grpc.health.v1.Health/Check", b"\x0a\x03abc")
        self.assertCode(ctx, grpc.StatusCode.NOT_FOUND)

    def test_reflection_lists_service(self):
        for version in ("v1", "v1alpha"):
            fn = self.channel.stream_stream(
                "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % version,
                request_serializer=None, response_deserializer=None)
            # ServerReflectionRequest{list_services = "*"} (field 7).
            replies = list(fn(iter([b"\x3a\x01*"]), timeout=5))
            self.assertEqual(len(replies), 1)
            self.assertIn(b"callmanager.v1.CallManager", replies[0])
            self.assertIn(b"grpc.health.v1.Health", replies[0])
            # file_containing_symbol (field 4) returns call_manager.proto.
            sym = b"callmanager.v1.CallManager"
            replies = list(fn(iter([b"\x22" + bytes([len(sym)]) + sym]), timeout=5))
            self.assertIn(b"callmanager/v1/call_manager.proto", replies[0])

    def test_unknown_method(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.call_raw(CM + "NoSuchRpc", b"")
        self.assertCode(ctx, grpc.StatusCode.UNIMPLEMENTED)

    def test_garbage_request_bytes(self):
        for payload in [b"\xff\xff\xff\xff", b"\x0a\xff\x01abc", b"\x12" * 50]:
            with self.assertRaises(grpc.RpcError) as ctx:
                self.channel.unary_unary(CM + "GetCall", request_serializer=None,
                                         response_deserializer=None)(payload, metadata=AUTH,
                                                                     timeout=5)
            self.assertCode(ctx, grpc.StatusCode.INVALID_ARGUMENT)

    def test_invalid_utf8_string(self):
        # GetCallRequest{call_id = b"\xff\xfe"}: protobuf-c does not check UTF-8; ccm does.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.channel.unary_unary(CM + "GetCall", request_serializer=None,
                                     response_deserializer=None)(b"\x0a\x02\xff\xfe",
                                                                 metadata=AUTH, timeout=5)
        self.assertIn(ctx.exception.code(), (grpc.StatusCode.NOT_FOUND,
                                             grpc.StatusCode.INVALID_ARGUMENT))

    def test_deadline_honoured(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.GetMetrics(pb.GetMetricsRequest(), metadata=AUTH, timeout=0.000001)
        self.assertCode(ctx, grpc.StatusCode.DEADLINE_EXCEEDED)


class Races(Base):
    """Runs last (name order): fills every free slot."""

    def in_flight(self):
        return int(psql("SELECT count(*) FROM calls_calllog "
                        "WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING')"))

    def test_z1_one_number_twenty_requests(self):
        number = fresh_number("+1666")

        def go(_):
            try:
                self.stub.InitiateCall(pb.InitiateCallRequest(
                    phone_number=number, campaign_id=self.campaign.id), metadata=AUTH)
                return "OK"
            except grpc.RpcError as e:
                return e.code().name
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            results = list(ex.map(go, range(20)))
        self.assertEqual(results.count("OK"), 1, results)
        self.assertEqual(results.count("RESOURCE_EXHAUSTED"), 19, results)

    def test_z2_concurrency_limit(self):
        free = MAX_CALLS - self.in_flight()
        self.assertGreater(free, 0)
        numbers = [fresh_number("+1777") for _ in range(free + 150)]

        def go(number):
            try:
                self.stub.InitiateCall(pb.InitiateCallRequest(
                    phone_number=number, campaign_id=self.campaign.id), metadata=AUTH, timeout=30)
                return "OK"
            except grpc.RpcError as e:
                return (e.code().name, trailing(e).get("ccm-error-reason"))
        with concurrent.futures.ThreadPoolExecutor(64) as ex:
            results = list(ex.map(go, numbers))
        self.assertEqual(results.count("OK"), free, results)
        self.assertEqual(results.count(("RESOURCE_EXHAUSTED", "concurrency_limit")), 150)
        self.assertEqual(int(redis("GET", "active_calls_count")), self.in_flight())
        self.assertEqual(self.in_flight(), MAX_CALLS)
        m = self.stub.GetMetrics(pb.GetMetricsRequest(), metadata=AUTH)
        self.assertEqual(m.current_concurrent_calls, MAX_CALLS)
        self.assertEqual(m.system_status, "at_capacity")
        self.assertEqual(m.recent_metrics[0].peak_concurrent_calls, MAX_CALLS)


if __name__ == "__main__":
    unittest.main(verbosity=2)
