"""The whole call pipeline over REST with the mock provider at zero delay:
1,000 calls, a consumer killed with SIGKILL in the middle, then an audit
(nothing lost, no attempt dialled twice, no outcome applied twice, metrics
agree, slots back to 0), and undecodable messages dead-lettered."""
import concurrent.futures
import os
import signal
import subprocess
import threading
import time
import unittest

from grpc_env import psql, redis
from rest_env import mock_url, request, wait_until

CALLS = int(os.environ.get("E2E_CALLS", "1000"))
CCM = os.environ["CCM_BIN"]
LOG_DIR = os.environ.get("LOG_DIR", "var/test/logs")


class Consumers:
    """`ccm consumers` as a child this test can kill and restart."""

    def __init__(self):
        self.proc = None
        self.out = None
        self.generation = 0

    def start(self):
        self.generation += 1
        self.out = open(os.path.join(LOG_DIR, "consumers-%d.out" % self.generation), "w")
        self.proc = subprocess.Popen([CCM, "consumers"], stdout=self.out,
                                     stderr=subprocess.STDOUT)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.out.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.out.close()
        return rc


def in_flight():
    return int(psql("SELECT count(*) FROM calls_calllog "
                    "WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING')"))


class Pipeline(unittest.TestCase):
    consumers = Consumers()

    @classmethod
    def setUpClass(cls):
        cls.consumers.start()
        wait_until(lambda: request("GET", "/health/", token=None)[0] == 200, 30, "gateway health")
        status, body, _ = request("POST", "/api/v1/campaigns/", {"name": "Pipeline"})
        assert status == 201, body
        cls.campaign = body["id"]

    @classmethod
    def tearDownClass(cls):
        rc = cls.consumers.stop()
        assert rc == 0, "ccm consumers exited with %s" % rc

    def initiate(self, number):
        """Initiates one call, waiting while the concurrency limit is hit."""
        for _ in range(2000):
            status, body, _ = request("POST", "/api/v1/initiate-call/",
                                      {"phone_number": number, "campaign_id": self.campaign})
            if status == 201:
                return body["call_id"]
            if status == 429 and body["error"]["details"].get("reason") == "concurrency_limit":
                time.sleep(0.05)
                continue
            if status == 503:
                time.sleep(0.2)
                continue
            raise AssertionError("initiate %s: %s %s" % (number, status, body))
        raise AssertionError("initiate %s never accepted" % number)

    def test_1_thousand_calls_with_a_killed_consumer(self):
        numbers = ["+1888%07d" % i for i in range(CALLS)]
        accepted = []
        lock = threading.Lock()
        killed = threading.Event()

        def go(number):
            call_id = self.initiate(number)
            with lock:
                accepted.append(call_id)
                if len(accepted) == CALLS // 3 and not killed.is_set():
                    killed.set()
                    self.consumers.kill9()  # mid-run, with work in flight
                    self.consumers.start()
            return call_id

        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            list(ex.map(go, numbers))
        self.assertTrue(killed.is_set())
        self.assertEqual(len(set(accepted)), CALLS)
        wait_until(lambda: in_flight() == 0, 180, "every call to leave INITIATED/PROCESSING")

        counts = dict(line.split("|") for line in psql(
            "SELECT status, count(*) FROM calls_calllog GROUP BY status").splitlines())
        counts = {k: int(v) for k, v in counts.items()}
        self.assertEqual(sum(counts.values()), CALLS, counts)
        self.assertEqual(set(counts) - {"PICKED", "DISCONNECTED", "RNR", "FAILED"}, set(), counts)

        status, stats, _ = request("GET", "/api/stats", token=None, base=mock_url())
        self.assertEqual(status, 200)
        # No attempt was dialled twice, and every call was dialled once.
        self.assertEqual(len(stats["by_key"]), CALLS)
        self.assertTrue(all(v["dials"] <= 1 for v in stats["by_key"].values()))
        self.assertEqual(stats["dials"], CALLS)
        sent = stats["callbacks_sent"]
        self.assertEqual(sent.get("PICKED", 0), counts.get("PICKED", 0))
        self.assertEqual(sent.get("DISCONNECTED", 0), counts.get("DISCONNECTED", 0))
        self.assertEqual(sent.get("RNR", 0), counts.get("RNR", 0))

        # Each outcome applied exactly once.
        self.assertEqual(psql("SELECT count(*) FROM (SELECT call_id FROM calls_callback "
                              "WHERE result LIKE 'applied:%' GROUP BY call_id "
                              "HAVING count(*) > 1) d"), "0")
        self.assertEqual(int(psql("SELECT count(*) FROM calls_callback "
                                  "WHERE result LIKE 'applied:%'")), CALLS)
        # Metrics agree with the call table; the slots are all back.
        status, m, _ = request("GET", "/api/v1/metrics/")
        today = m["recent_metrics"][0]
        self.assertEqual(today["total_calls_initiated"], CALLS)
        self.assertEqual(today["total_calls_picked"], counts.get("PICKED", 0))
        self.assertEqual(today["total_calls_disconnected"], counts.get("DISCONNECTED", 0))
        self.assertEqual(today["total_calls_rnr"], counts.get("RNR", 0))
        self.assertEqual(m["current_concurrent_calls"], 0)
        self.assertEqual(redis("GET", "active_calls_count"), "0")
        self.assertEqual(psql("SELECT count(*) FROM calls_outbox WHERE sent_at IS NULL"), "0")

    def test_2_undecodable_messages_are_dead_lettered(self):
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        for topic in ("initiated_call_topic", "callback_topic"):
            subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-k", "garbage"],
                           input=b"\xff\x01not a protobuf", check=True)
        wait_until(lambda: psql("SELECT count(DISTINCT original_topic) FROM calls_dlqentry "
                                "WHERE message_key = 'garbage'") == "2",
                   60, "two dead letters")
        tail = subprocess.run([CCM, "kafka-tail", "--topic", "dlq_topic", "--from-beginning",
                               "--max", "2"], capture_output=True, text=True, timeout=60)
        self.assertEqual(tail.returncode, 0, tail.stderr)
        self.assertEqual(len(tail.stdout.splitlines()), 2, tail.stdout)
        self.assertIn('"original_topic"', tail.stdout)
        # The consumers go on: a new call still completes.
        call_id = self.initiate("+18889999999")
        wait_until(lambda: psql("SELECT status FROM calls_calllog WHERE call_id = '%s'" % call_id)
                   not in ("INITIATED", "PROCESSING"), 60, "the next call to complete")
        # Exactly the two garbage messages were dead-lettered, and counted.
        # (The topics outlive each script's database: an event an earlier
        # script left unconsumed is dead-lettered here too, as unknown.)
        self.assertEqual(psql("SELECT count(*) FROM calls_dlqentry WHERE message_key = 'garbage'"),
                         "2")
        status, m, _ = request("GET", "/api/v1/metrics/")
        self.assertEqual(m["recent_metrics"][0]["dlq_entries_created"],
                         int(psql("SELECT count(*) FROM calls_dlqentry")))

    def test_3_partitions_move_between_two_consumer_processes(self):
        # A second `ccm consumers` joins mid-run (the group rebalances: the
        # first drains its handler threads and commits before giving
        # partitions up), then the first stops gracefully (the second takes
        # everything). Every call is still dialled once and applied once.
        n = max(CALLS // 3, 60)
        numbers = ["+1777%07d" % i for i in range(n)]
        accepted = []
        lock = threading.Lock()
        second = Consumers()
        steps = []

        def assignments():
            with open(os.path.join(LOG_DIR, "kafka.log")) as f:
                return f.read().count("partition(s) assigned")

        def go(number):
            call_id = self.initiate(number)
            with lock:
                accepted.append(call_id)
                if len(accepted) == n // 3:
                    before = assignments()
                    second.start()
                    # Both processes hold partitions of both topics after
                    # the rebalance (eager: each is assigned anew).
                    wait_until(lambda: assignments() >= before + 4, 60, "the group to rebalance")
                    steps.append("joined")
                if len(accepted) == 2 * n // 3:
                    steps.append(self.consumers.stop())
            return call_id

        try:
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                list(ex.map(go, numbers))
        finally:
            type(self).consumers = second  # tearDownClass stops this one
        self.assertEqual(steps, ["joined", 0], "the first consumers process did not stop cleanly")
        wait_until(lambda: in_flight() == 0, 180, "every call of the rebalance run to finish")

        in_list = ",".join("'%s'" % c for c in accepted)
        rows = psql("SELECT status, count(*) FROM calls_calllog WHERE call_id IN (%s) "
                    "GROUP BY status" % in_list).splitlines()
        counts = {k: int(v) for k, v in (line.split("|") for line in rows)}
        self.assertEqual(sum(counts.values()), n, counts)
        self.assertEqual(set(counts) - {"PICKED", "DISCONNECTED", "RNR", "FAILED"}, set(), counts)
        status, stats, _ = request("GET", "/api/stats", token=None, base=mock_url())
        self.assertEqual(status, 200)
        for call_id in accepted:
            self.assertEqual(stats["by_key"].get(call_id + ":1", {}).get("dials"), 1, call_id)
        # One applied outcome per call, and the counters agree with the table.
        self.assertEqual(psql("SELECT count(*) FROM calls_callback WHERE result LIKE 'applied:%%' "
                              "AND call_id IN (%s)" % in_list), str(n))
        totals = {k: int(v) for k, v in (line.split("|") for line in psql(
            "SELECT status, count(*) FROM calls_calllog GROUP BY status").splitlines())}
        status, m, _ = request("GET", "/api/v1/metrics/")
        today = m["recent_metrics"][0]
        self.assertEqual(today["total_calls_initiated"], sum(totals.values()))
        self.assertEqual(today["total_calls_picked"], totals.get("PICKED", 0))
        self.assertEqual(today["total_calls_disconnected"], totals.get("DISCONNECTED", 0))
        self.assertEqual(today["total_calls_rnr"], totals.get("RNR", 0))
        self.assertEqual(redis("GET", "active_calls_count"), "0")
        with open(os.path.join(LOG_DIR, "kafka.log")) as f:
            self.assertIn("partition(s) assigned", f.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
