"""Fault tests: the whole system (`ccm start-all` with the mock provider)
under a steady stream of initiate-call requests over REST, while one thing
at a time goes wrong. After each scenario the system must settle and pass
the audit of tests/e2e/audit.py (every accepted call final or waiting for a
retry, no attempt dialled twice, each callback applied once, metrics equal
to the tables, Redis slots equal to the calls in flight, outbox drained).

1. Redis stopped for 20 s, then restarted (empty): initiate answers 503
   meanwhile, callbacks are still applied, the slots of the calls in flight
   are reconciled from the database when it is back.
2. PostgreSQL stopped and started again (a burst of requests in flight when
   it stops): requests fail cleanly with 503, the consumers pause and
   resume, nothing is dead-lettered.
3. The Kafka broker stopped for 30 s: initiate keeps answering 201 (outbox),
   the events flow once it is back.
4. SIGKILL at random moments to the server, the gateway, the consumers, the
   scheduler (start-all restarts them) and to standalone initiate, callback
   and relay consumers (restarted by the test).
5. A slow provider (beyond EXTERNAL_SERVICE_TIMEOUT_SECONDS) and a failing
   one (HTTP 500): bounded retries (1 + 3 requests after 1, 2, 4 s, same
   Idempotency-Key, at most one dial), then FAILED with the slot released.

Calls that must stay in flight (scenario 1) or reach a faulty provider
(scenario 5) go through a "side path": an extra server and gateway whose
initiate topic (one partition, created for this run) only the consumer of
that scenario reads, so the main stream keeps flowing through the main path.

Scenarios run in this order on one system; the audit is cumulative. The
servers are always restored (stack.sh start) when a scenario ends, even on a
failure, since later scripts share them. FAULTS_SEED=<n> replays the random
kill schedule of scenario 4; FAULTS_RATE sets the stream's calls per second.
"""
import os
import random
import re
import signal
import threading
import time
import unittest

import audit
from faults_tools import (LOG_DIR, Proc, Servers, Stream, children, free_port,
                          kafka_create_topics, kafka_delete_topics, log, mock_stats, port_open,
                          post_json, random_seed, wait_for)
from rest_env import request

RATE = float(os.environ.get("FAULTS_RATE", "8"))
MAX_CONCURRENT = int(os.environ.get("MAX_CONCURRENT_CALLS", "100"))
MOCK_PORT = int(os.environ.get("MOCK_PORT", "8001"))
SETTLE_S = float(os.environ.get("FAULTS_SETTLE_SECONDS", "90"))
UNAVAILABLE_MESSAGE = "Service temporarily unavailable. Please retry."
START_ALL_COMMANDS = ("server", "gateway", "consumers", "scheduler", "mock-provider")
BASE_TOPIC = os.environ.get("KAFKA_INITIATE_CALL_TOPIC", "initiated_call_topic")


def is_clean_503(r):
    """SPEC 4.1: 503 service_unavailable, its message, Retry-After: 1."""
    try:
        err = r.body["error"]
        return (r.status == 503 and err["code"] == "service_unavailable"
                and err["message"] == UNAVAILABLE_MESSAGE and r.headers.get("Retry-After") == "1")
    except (TypeError, KeyError):
        return False


def summary(results):
    counts = {}
    for r in results:
        key = str(r.status) + ("/" + r.reason if r.reason else "")
        counts[key] = counts.get(key, 0) + 1
    return counts


class LogMark:
    """What the shared log files gained since this mark."""

    def __init__(self):
        self.sizes = {n: self.size(n) for n in ("app.log", "kafka.log", "calls.log")}

    @staticmethod
    def size(name):
        try:
            return os.path.getsize(os.path.join(LOG_DIR, name))
        except OSError:
            return 0

    def new(self, name):
        try:
            with open(os.path.join(LOG_DIR, name), encoding="utf-8", errors="replace") as f:
                if self.size(name) >= self.sizes.get(name, 0):  # else rotated: read it all
                    f.seek(self.sizes.get(name, 0))
                return f.read()
        except FileNotFoundError:
            return ""


class SidePath:
    """An extra server and gateway whose initiate events go to a topic of
    their own, with an optional initiate consumer for that topic."""

    def __init__(self, kind):
        self.kind = kind
        self.topic = "%s_faults_%s_%d" % (BASE_TOPIC, kind, os.getpid())
        self.grpc_port, self.http_port = free_port(), free_port()
        self.base = "http://127.0.0.1:%d" % self.http_port
        self.env = {"KAFKA_INITIATE_CALL_TOPIC": self.topic, "GRPC_PORT": str(self.grpc_port),
                    "GRPC_TARGET": "127.0.0.1:%d" % self.grpc_port}
        self.procs = []

    def start(self, provider_port=None):
        self.procs.append(Proc("server-" + self.kind, ["server"], self.env))
        self.procs.append(Proc("gateway-" + self.kind, ["gateway"],
                               dict(self.env, HTTP_PORT=str(self.http_port))))
        if provider_port is not None:
            self.procs.append(Proc(
                "consumers-" + self.kind, ["consumers", "--consumer", "initiate"],
                dict(self.env, EXTERNAL_SERVICE_TIMEOUT_SECONDS="1",
                     EXTERNAL_SERVICE_URL="http://127.0.0.1:%d/api/initiate-call" % provider_port)))
        wait_for(lambda: request("GET", "/health/", token=None, base=self.base)[0] == 200, 30,
                 "the %s gateway" % self.kind)

    def initiate(self, stream):
        status, body, _ = post_json("/api/v1/initiate-call/",
                                    {"phone_number": stream.number(),
                                     "campaign_id": stream.campaign}, base=self.base)
        assert status == 201, (self.kind, status, body)
        return body["call_id"]

    def stop(self):
        """Stops its processes; returns the problems found."""
        problems = []
        for proc in reversed(self.procs):
            rc = proc.stop()
            if rc != 0:
                problems.append("%s exited with %s" % (proc.name, rc))
            if proc.sanitizer_report():
                problems.append("sanitizer report in %s" % proc.path)
        self.procs = []
        return problems


def in_list(ids):
    return ",".join("'%s'" % c for c in ids)


class Faults(unittest.TestCase):
    servers = None
    supervisor = None
    stream = None
    hold = None
    topics = []
    extra_mocks = {}  # name -> (port, Proc)
    manual_callbacks = 0  # sent by the test itself

    @classmethod
    def setUpClass(cls):
        cls.t_start = time.time()
        cls.mark = LogMark()
        cls.servers = Servers()
        cls.servers.restore()
        try:
            cls.start_system()
        except BaseException:
            try:
                cls.tearDownClass()
            finally:
                raise

    @classmethod
    def start_system(cls):
        cls.supervisor = Proc("start-all", ["start-all"])
        # Calls that stay in flight: their initiate topic has no consumer.
        cls.hold = SidePath("hold")
        kafka_create_topics([(cls.hold.topic, 1)])
        cls.topics.append(cls.hold.topic)
        wait_for(lambda: set(children(cls.supervisor.pid)) >= set(START_ALL_COMMANDS), 30,
                 "start-all's children")
        wait_for(lambda: request("GET", "/health/", token=None)[0] == 200, 60, "gateway health")
        wait_for(lambda: port_open(MOCK_PORT), 30, "the mock provider")
        cls.hold.start()
        status, body, _ = request("POST", "/api/v1/campaigns/", {"name": "Faults"})
        assert status == 201, body
        cls.stream = Stream(body["id"])
        log("system up (start-all pid %d), stream at %.1f calls/s, MAX_CONCURRENT_CALLS=%d"
            % (cls.supervisor.pid, RATE, MAX_CONCURRENT))

    @classmethod
    def tearDownClass(cls):
        problems = []
        try:
            if cls.stream is not None:
                cls.stream.close()
        finally:
            if cls.hold is not None:
                problems += cls.hold.stop()
            for name, (_, proc) in cls.extra_mocks.items():
                proc.stop()
            if cls.supervisor is not None:
                rc = cls.supervisor.stop(timeout=40)
                if rc != 0:
                    problems.append("ccm start-all exited with %s" % rc)
                if cls.supervisor.sanitizer_report():
                    problems.append("sanitizer report in %s" % cls.supervisor.path)
            cls.servers.restore()
            cls.servers.cleanup()
            if cls.topics:
                try:
                    kafka_delete_topics(cls.topics)
                except Exception as e:  # noqa: BLE001 (leftover topics are harmless)
                    log("could not delete the topics %s: %s" % (cls.topics, e))
        log("total %.0f s" % (time.time() - cls.t_start))
        assert not problems, problems

    # ---------------------------------------------------------- helpers ---

    def run_stream(self, seconds, phase, rate=RATE):
        self.stream.start(rate, phase)
        time.sleep(seconds)

    def settle_and_audit(self, scenario):
        """Pauses the stream, waits for the system to settle, audits."""
        self.stream.pause()
        took = audit.settle(SETTLE_S, log=log)
        # Slots are released just after the outcome commits: give Redis a
        # moment to agree before the strict comparison.
        try:
            wait_for(lambda: audit.redis("GET", audit.concurrency_key()) == str(
                audit.quiet_state()[0]), 10, "the slot count to match")
        except AssertionError:
            pass
        mocks = {"main": mock_stats(MOCK_PORT)}
        for name, (port, _) in self.extra_mocks.items():
            mocks[name] = mock_stats(port)
        status, api, _ = request("GET", "/api/v1/metrics/")
        self.assertEqual(status, 200, api)
        result = audit.audit(self.stream.accepted(), mocks, "main", MAX_CONCURRENT, api)
        # Every callback the mock delivered (2xx) was durably recorded
        # (duplicates after an ambiguous 503 only add rows), none is pending,
        # none was refused (4xx) or given up.
        main = mocks["main"]
        recorded = int(audit.scalar("SELECT count(*) FROM calls_callback"))
        self.assertEqual(main["pending_callbacks"], 0, main)
        self.assertGreaterEqual(recorded - self.manual_callbacks,
                                sum(main["callbacks_sent"].values()), main["callbacks_sent"])
        mock_log = self.mark.new("calls.log")
        self.assertNotRegex(mock_log, r"Callback sent: [^\n]* http=4|Callback for [^\n]* gave up")
        log("%s: settled in %.1f s; audit ok: %s" % (scenario, took, result))
        # No other answer than 201, a clean 503 and 429 concurrency_limit
        # (retried), ever; refused connections only while the gateway is
        # being killed.
        odd = [r for r in self.stream.select() if r.status not in (201, 503)
               and not (r.status == 429 and r.reason == "concurrency_limit")
               and not (r.status == "conn" and r.phase == "kill")]
        self.assertEqual(odd, [], "unexpected initiate answers")
        bad503 = [r for r in self.stream.select() if r.status == 503 and not is_clean_503(r)]
        self.assertEqual(bad503, [], "503 answers without SPEC 4.1's shape")

    def assert_accepting(self, within, phase):
        """A new call is answered 201 within `within` seconds."""
        t0 = time.time()
        wait_for(lambda: any(r.status == 201 for r in self.stream.select(t_from=t0)), within,
                 "initiate to answer 201 again (%s)" % phase)

    def assert_supervised(self, before=None, killed=()):
        """start-all and its children run; with `before` (children() at the
        start of the scenario), none restarted except the killed ones: an
        outage must not crash any process."""
        kids = children(self.supervisor.pid)
        self.assertTrue(set(kids) >= set(START_ALL_COMMANDS), kids)
        self.assertTrue(self.supervisor.alive())
        if before is not None:
            restarted = sorted(c for c in START_ALL_COMMANDS
                               if c not in killed and kids.get(c) != before.get(c))
            self.assertEqual(restarted, [], "processes that died and were restarted by start-all "
                                            "(see %s)" % self.supervisor.path)

    def check_degraded(self, dependency):
        """During a Redis or Kafka outage: /health/ stays 200 (SPEC 5: only
        PostgreSQL takes the API out of rotation), metrics say degraded."""
        status, body, _ = request("GET", "/health/", token=None)
        self.assertEqual((status, body), (200, {"status": "healthy"}), "health, %s down"
                         % dependency)
        status, m, _ = request("GET", "/api/v1/metrics/")
        self.assertEqual(status, 200, m)
        self.assertEqual(m["dependencies"][dependency], "down", m["dependencies"])
        self.assertEqual(m["system_status"], "degraded", m)

    def callback(self, call_id, status):
        """The provider's callback, sent by hand."""
        code, body, _ = request("PUT", "/api/v1/callback/",
                                {"call_id": call_id, "status": status, "call_duration": 7})
        self.assertEqual(code, 200, body)
        Faults.manual_callbacks += 1

    def applied_between(self, t_from, t_to):
        return int(audit.scalar(
            "SELECT count(*) FROM calls_callback WHERE result LIKE 'applied:%%' AND applied_at "
            "BETWEEN to_timestamp(%f) AND to_timestamp(%f)" % (t_from, t_to)))

    # -------------------------------------------------------- scenarios ---

    def test_1_redis_outage(self):
        if not self.servers.redis_local:
            self.skipTest("Redis is external")
        mark = LogMark()
        before = children(self.supervisor.pid)
        self.run_stream(3, "redis-before")
        held = [self.hold.initiate(self.stream) for _ in range(3)]
        try:
            self.redis_outage_with(held, mark)
        finally:
            # Whatever happened, the held calls end (else nothing settles).
            for call_id in held:
                if audit.scalar("SELECT status FROM calls_calllog WHERE call_id = '%s'"
                                % call_id) not in ("PICKED", "FAILED"):
                    self.callback(call_id, "PICKED")
        self.run_stream(3, "redis-after")
        self.settle_and_audit("scenario 1 (Redis)")
        self.assertEqual(audit.sql("SELECT status FROM calls_calllog WHERE call_id IN (%s)"
                                   % in_list(held)), [["PICKED"]] * 3)
        self.assert_supervised(before)

    def redis_outage_with(self, held, mark):
        self.assertEqual(set(held) - audit.slot_calls(), set(), "held calls without a slot")
        try:
            t_stop = time.time()
            self.servers.stop_redis()
            t_down = time.time()
            log("Redis stopped (%.1f s)" % (t_down - t_stop))
            self.stream.phase = "redis-down"
            time.sleep(3)
            self.check_degraded("redis")
            # A callback sent now is recorded and applied (its slot cannot
            # be released: the reconciliation must not bring it back).
            self.callback(held[0], "PICKED")
            wait_for(lambda: audit.scalar("SELECT status FROM calls_calllog WHERE call_id = '%s'"
                                          % held[0]) == "PICKED", 10,
                     "a callback to be applied while Redis is down")
            time.sleep(max(0.0, t_stop + 20 - time.time()))
            t_restart = time.time()
            self.servers.start("redis")
            t_up = time.time()
            log("Redis back after %.1f s down (its start took %.1f s)"
                % (t_up - t_down, t_up - t_restart))
            self.stream.phase = "redis-after"
        finally:
            self.servers.restore()
        # The slots of the calls still in flight come back (the restarted
        # Redis is empty) and the count equals the slot set.
        key = audit.concurrency_key()
        wait_for(lambda: set(held[1:]) <= audit.slot_calls(), 15,
                 "the held calls' slots to be reconciled")
        self.assertNotIn(held[0], audit.slot_calls())
        count, size = audit.redis("EVAL", "return {redis.call('GET', KEYS[1]), "
                                  "redis.call('SCARD', KEYS[2])}", "2", key,
                                  key + ":slots").split()
        self.assertEqual(count, size, "the slot count differs from the slot set")
        self.assertIn("concurrency slots reconciled", mark.new("app.log"))
        self.assert_accepting(15, "after Redis")
        # Release the other held calls.
        for call_id in held[1:]:
            self.callback(call_id, "PICKED")
        # Meanwhile: every initiate answered 503 (never 201: no slot can be
        # taken), and callbacks were still recorded and applied.
        during = self.stream.select(t_from=t_down + 0.5, t_to=t_restart)
        applied = self.applied_between(t_down + 0.5, t_restart)
        log("during the Redis outage: %s; %d callback(s) applied" % (summary(during), applied))
        self.assertGreater(len(during), 20)
        self.assertEqual([r for r in during if not is_clean_503(r)], [],
                         "initiate answers other than 503 while Redis was down")
        self.assertGreater(applied, 0, "no callback applied while Redis was down")

    def test_2_postgres_restart(self):
        if not self.servers.pg_local:
            self.skipTest("PostgreSQL is external")
        mark = LogMark()
        dlq_before = int(audit.scalar("SELECT count(*) FROM calls_dlqentry"))
        before = children(self.supervisor.pid)
        self.run_stream(3, "pg-before")
        try:
            # A burst of requests in flight while PostgreSQL goes down.
            t_stop = time.time()
            burst = [threading.Thread(target=self.stream.one, args=(self.stream.number(),))
                     for _ in range(24)]
            for i, t in enumerate(burst):
                self.stream.inflight += 1
                t.start()
                if i == 8:
                    stopper = threading.Thread(target=self.servers.stop_postgres)
                    stopper.start()
            stopper.join()
            t_down = time.time()
            log("PostgreSQL stopped (%.1f s)" % (t_down - t_stop))
            self.stream.phase = "pg-down"
            time.sleep(2.5)
            # Out of rotation while PostgreSQL is down; reads fail cleanly.
            status, body, _ = request("GET", "/health/", token=None)
            self.assertEqual((status, body), (503, {"status": "unhealthy"}))
            status, body, headers = request("GET", "/api/v1/metrics/")
            self.assertEqual((status, body["error"]["code"], headers.get("Retry-After")),
                             (503, "service_unavailable", "1"), body)
            time.sleep(max(0.0, t_down + 5 - time.time()))
            t_restart = time.time()
            self.servers.start("postgres")
            t_up = time.time()
            log("PostgreSQL back after %.1f s down (its start took %.1f s)"
                % (t_up - t_down, t_up - t_restart))
            self.stream.phase = "pg-after"
        finally:
            self.servers.restore()
        for t in burst:
            t.join()
        self.assert_accepting(20, "after PostgreSQL")
        self.run_stream(3, "pg-after")
        around = self.stream.select(t_from=t_stop - 1, t_to=time.time())
        during = self.stream.select(t_from=t_down + 0.5, t_to=t_restart)
        log("during the PostgreSQL outage: %s; around it: %s" % (summary(during),
                                                                  summary(around)))
        self.assertGreater(len(during), 10)
        self.assertEqual([r for r in during if not is_clean_503(r)], [],
                         "initiate answers other than 503 while PostgreSQL was down")
        self.assertEqual([r for r in around if r.status != 201 and not is_clean_503(r)], [],
                         "requests around the restart must end 201 or a clean 503")
        self.settle_and_audit("scenario 2 (PostgreSQL)")
        self.assertEqual(int(audit.scalar("SELECT count(*) FROM calls_dlqentry")), dlq_before,
                         "messages dead-lettered because of the outage")
        # The consumers paused (logged) instead of dead-lettering.
        self.assertIn("dependency unavailable", mark.new("kafka.log"))
        self.assert_supervised(before)

    def test_3_kafka_outage(self):
        if not self.servers.kafka_local:
            self.skipTest("Kafka is external")
        # The outage holds every new call's slot for about a minute (30 s,
        # the broker's start, the backlog): stay well under the limit.
        rate = min(RATE, 4.0, max(1.0, (MAX_CONCURRENT - 60) / 80.0))
        before = children(self.supervisor.pid)
        self.run_stream(3, "kafka-before", rate)
        try:
            t_stop = time.time()
            self.servers.stop_kafka()
            t_down = time.time()
            log("Kafka broker stopped (%.1f s)" % (t_down - t_stop))
            self.stream.phase = "kafka-down"
            time.sleep(8)  # the server checks Kafka every 5 s
            self.check_degraded("kafka")
            time.sleep(max(0.0, t_down + 30 - time.time()))
            t_restart = time.time()
            self.stream.rate = min(rate, 2.0)  # the broker's start can take long here
            pending_at_restart = int(audit.scalar(
                "SELECT count(*) FROM calls_outbox WHERE sent_at IS NULL"))
            self.servers.start("kafka")
            t_up = time.time()
            log("Kafka back after %.1f s down (its start took %.1f s), %d events waited in the "
                "outbox" % (t_up - t_down, t_up - t_restart, pending_at_restart))
            self.stream.phase = "kafka-after"
        finally:
            self.servers.restore()
        during = self.stream.select(t_from=t_stop, t_to=t_up)
        log("during the Kafka outage: %s" % summary(during))
        self.assertGreater(len(during), 30)
        self.assertEqual([r for r in during if r.status != 201], [],
                         "initiate must keep answering 201 while Kafka is down")
        self.assertGreater(pending_at_restart, 0, "nothing waited in the outbox")
        # The events flow once it is back: the outbox drains.
        wait_for(lambda: audit.scalar("SELECT count(*) FROM calls_outbox "
                                      "WHERE sent_at IS NULL") == "0", 60,
                 "the outbox to drain after Kafka came back")
        log("outbox drained %.1f s after Kafka came back" % (time.time() - t_up))
        self.run_stream(2, "kafka-after", rate)
        self.settle_and_audit("scenario 3 (Kafka)")
        self.assert_supervised(before)

    def test_4_sigkill(self):
        seed = random_seed()
        rng = random.Random(seed)
        log("scenario 4: kill schedule seed %d (FAULTS_SEED=%d replays it)" % (seed, seed))
        roles = ("initiate", "callback", "relay")
        extras = {r: Proc("consumers-" + r, ["consumers", "--consumer", r]) for r in roles}
        duration = 28.0
        targets = ["server", "gateway", "consumers", "scheduler", "server", "consumers"] + \
            ["extra-" + r for r in roles] + ["extra-" + rng.choice(roles)]
        times = sorted(rng.uniform(2, duration - 3) for _ in targets)
        rng.shuffle(targets)
        plan = list(zip(times, targets))
        log("plan: %s" % ", ".join("%.1fs %s" % p for p in plan))
        restarts = []  # (target, old pid)
        before = children(self.supervisor.pid)
        try:
            self.stream.start(RATE, "kill")
            t0 = time.time()
            for at, target in plan:
                time.sleep(max(0.0, t0 + at - time.time()))
                if target.startswith("extra-"):
                    role = target[len("extra-"):]
                    proc = extras[role]
                    proc.kill9()
                    log("SIGKILL standalone consumers --consumer %s (pid %d)" % (role, proc.pid))
                    time.sleep(rng.uniform(0.2, 2.0))
                    extras[role] = Proc("consumers-" + role, ["consumers", "--consumer", role])
                    continue
                kids = children(self.supervisor.pid)
                if target not in kids:
                    log("%s is being restarted by start-all: not killed again" % target)
                    continue
                os.kill(kids[target], signal.SIGKILL)
                restarts.append((target, kids[target]))
                log("SIGKILL start-all's %s (pid %d)" % (target, kids[target]))
            time.sleep(max(0.0, t0 + duration - time.time()))
            self.stream.pause()
        finally:
            problems = []
            for role, proc in extras.items():
                rc = proc.stop()
                if rc != 0:
                    problems.append("consumers --consumer %s exited with %s" % (role, rc))
                if proc.sanitizer_report():
                    problems.append("sanitizer report in %s" % proc.path)
        self.assertEqual(problems, [])
        # start-all restarted every child it lost (1 s, doubling to 30 s).
        for target, old in restarts:
            wait_for(lambda: children(self.supervisor.pid).get(target, old) != old, 40,
                     "start-all to restart %s" % target)
        wait_for(lambda: set(children(self.supervisor.pid)) >= set(START_ALL_COMMANDS), 40,
                 "every start-all child to run again")
        wait_for(lambda: request("GET", "/health/", token=None)[0] == 200, 40, "health")
        log("during the kills: %s" % summary(self.stream.select(phase="kill")))
        self.stream.start(RATE, "kill-after")
        self.assert_accepting(20, "after the kills")
        time.sleep(2)
        self.settle_and_audit("scenario 4 (SIGKILL)")
        self.assert_supervised(before, killed={t for t, _ in restarts})

    def test_5_slow_and_failing_provider(self):
        # Each faulty provider gets calls of its own through a side path
        # whose initiate consumer uses it (EXTERNAL_SERVICE_TIMEOUT 1 s),
        # while the main stream goes on through the main path.
        setups = {"slow": {"MOCK_RESPONSE_DELAY_MS": "2500"},  # dials, answers too late
                  "failing": {"MOCK_FAIL_RATE": "1"}}          # HTTP 500, never dials
        probes_per_kind = {"slow": 1, "failing": 2}
        mark = LogMark()
        before = children(self.supervisor.pid)
        paths = {kind: SidePath(kind) for kind in setups}
        kafka_create_topics([(p.topic, 1) for p in paths.values()])
        self.topics.extend(p.topic for p in paths.values())
        problems = []
        try:
            for kind, mock_env in setups.items():
                port = free_port()
                env = dict(mock_env, MOCK_PORT=str(port), MOCK_DELAY_MIN_MS="3600000",
                           MOCK_DELAY_MAX_MS="3600000")
                self.extra_mocks[kind] = (port, Proc("mock-" + kind, ["mock-provider"], env))
                wait_for(lambda: port_open(port), 30, "the %s mock" % kind)
                paths[kind].start(provider_port=port)
            self.stream.start(RATE, "provider")
            time.sleep(2)  # the initiate group rebalances meanwhile
            probes = {}
            for kind, n in probes_per_kind.items():
                for _ in range(n):
                    probes[paths[kind].initiate(self.stream)] = kind
            log("probe calls: %s" % probes)
            # 1 + 3 requests with 1, 2, 4 s between them: about 11 s for the
            # slow provider (1 s timeouts), 7 s per call for the failing one.
            wait_for(lambda: audit.scalar("SELECT count(*) FROM calls_calllog WHERE call_id IN "
                                          "(%s) AND status = 'FAILED'" % in_list(probes))
                     == str(len(probes)), 60, "the probe calls to fail")
            self.stream.pause()
            stats = {kind: mock_stats(self.extra_mocks[kind][0]) for kind in setups}
            log("slow provider: %s; failing provider: %s"
                % (stats["slow"]["by_key"], stats["failing"]["by_key"]))
            calls_log = mark.new("calls.log")
            for call_id, kind in probes.items():
                key = call_id + ":1"
                # The same Idempotency-Key 4 times (1 + 3 retries); the slow
                # provider dialled once, the failing one never.
                self.assertEqual(stats[kind]["by_key"].get(key),
                                 {"requests": 4, "dials": 1 if kind == "slow" else 0},
                                 (kind, key))
                row = audit.sql("SELECT l.status, l.error_message, l.attempt_count, a.status, "
                                "a.external_call_id IS NULL, extract(epoch FROM a.outcome_at - "
                                "coalesce(l.last_attempt_at, l.created_at)) "
                                "FROM calls_calllog l JOIN calls_callattempt a "
                                "ON a.call_id = l.call_id AND a.attempt = 1 "
                                "WHERE l.call_id = '%s'" % call_id)
                self.assertEqual(len(row), 1, call_id)
                status, error, count, attempt_status, no_external, elapsed = row[0]
                self.assertEqual((status, error, count, attempt_status, no_external),
                                 ("FAILED", audit.INITIATE_FAILED, "1", "FAILED", "t"), call_id)
                self.assertGreaterEqual(float(elapsed), 7.0, "backoff 1 + 2 + 4 s: " + call_id)
                for wait in (1000, 2000, 4000):
                    self.assertRegex(calls_log, r"Call %s attempt 1: [^\n]*; retrying in %d ms"
                                     % (re.escape(call_id), wait))
            # The failed calls' slots are free (the audit compares the whole
            # slot set with the calls in flight).
            self.assertEqual(audit.slot_calls() & set(probes), set())
        finally:
            for path in paths.values():
                problems += path.stop()
        self.assertEqual(problems, [])
        self.settle_and_audit("scenario 5 (provider)")
        self.assert_supervised(before)


if __name__ == "__main__":
    unittest.main(verbosity=2)
