"""The end-of-scenario audit of the fault tests, straight from PostgreSQL,
Redis and the mock providers' /api/stats:

- every accepted call is in the database, in a final state (PICKED, FAILED)
  or waiting for its retry (DISCONNECTED/RNR with next_retry_at);
- every attempt was sent to a provider at most once (dials <= 1 per
  Idempotency-Key), and every attempt that knows its external id was dialled;
- every callback was applied once: per call, the applied callbacks are
  exactly the attempts that got an outcome from a callback (those not failed
  by the initiate consumer or the stale sweep), and none is left unprocessed;
- the daily metrics match the call, attempt, callback and DLQ tables;
- the concurrency count (Redis) matches the calls in flight (database);
- nothing is left in the outbox.
"""
import os
import re
import subprocess
import time

INITIATE_FAILED = "Failed to initiate external call"
STALE = "Stale call: no outcome received"
IN_FLIGHT = ("INITIATED", "PROCESSING", "RETRYING")


def sql(query):
    """Rows of a query as lists of strings (psql -A -t, '|' separated)."""
    r = subprocess.run(
        ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
         "-h", os.environ.get("DB_HOST", "127.0.0.1"), "-p", os.environ.get("DB_PORT", "5432"),
         "-U", os.environ.get("DB_USER", "campaign_user"),
         "-d", os.environ.get("DB_NAME", "campaign_db"), "-c", query],
        capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("psql failed: %s" % r.stderr.strip())
    return [line.split("|") for line in r.stdout.splitlines() if line != ""]


def scalar(query):
    rows = sql(query)
    return rows[0][0] if rows else None


def redis(*args):
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    hostport, _, db = url.split("//", 1)[1].partition("/")
    host, port = hostport.rsplit("@", 1)[-1].rsplit(":", 1)
    cmd = ["redis-cli", "-h", host, "-p", port, "-n", db or "0"] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("redis-cli failed: %s" % r.stderr.strip())
    return r.stdout.strip()


def concurrency_key():
    return os.environ.get("REDIS_CONCURRENCY_KEY", "active_calls_count")


SLOT_MEMBER = re.compile(r"^(.*):([0-9]+)$")


def slot_members():
    """The members of the slot set: "<call_id>:<attempt>" (bare call ids in
    builds before per-attempt slots)."""
    return {x for x in redis("SMEMBERS", concurrency_key() + ":slots").splitlines() if x}


def slot_calls(members=None):
    """The call ids that hold a slot."""
    out = set()
    for m in slot_members() if members is None else members:
        match = SLOT_MEMBER.match(m)
        out.add(match.group(1) if match else m)
    return out


def has_column(table, column):
    return scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = '%s' "
                  "AND column_name = '%s'" % (table, column)) == "1"


def quiet_state():
    """(in flight, retries due now or soon, outbox pending, callbacks
    unprocessed). A retry due within 10 s is about to be claimed: not quiet."""
    row = sql("SELECT (SELECT count(*) FROM calls_calllog WHERE status IN "
              "('INITIATED','PROCESSING','RETRYING')), "
              "(SELECT count(*) FROM calls_calllog WHERE status IN ('DISCONNECTED','RNR') "
              "AND next_retry_at < now() + interval '10 seconds'), "
              "(SELECT count(*) FROM calls_outbox WHERE sent_at IS NULL), "
              "(SELECT count(*) FROM calls_callback WHERE applied_at IS NULL)")[0]
    return tuple(int(x) for x in row)


def settle(timeout, log=print):
    """Waits until nothing is in flight, no retry is overdue, the outbox is
    empty and every callback is processed. Returns the seconds it took."""
    t0 = time.time()
    last = None
    while True:
        try:
            state = quiet_state()
        except RuntimeError as e:
            state = str(e)
        if state == (0, 0, 0, 0):
            return time.time() - t0
        if state != last:
            log("settling: in flight, retries due, outbox, unprocessed callbacks = %s"
                % (state,))
            last = state
        if time.time() - t0 > timeout:
            detail = sql("SELECT call_id, status, attempt_count, last_attempt_at, next_retry_at "
                         "FROM calls_calllog WHERE status IN ('INITIATED','PROCESSING','RETRYING') "
                         "OR (status IN ('DISCONNECTED','RNR') "
                         "AND next_retry_at < now() + interval '10 seconds') LIMIT 20")
            raise AssertionError("the system did not settle within %ss: %s; calls: %s"
                                 % (timeout, state, detail))
        time.sleep(0.5)


class AuditError(AssertionError):
    pass


def audit(accepted, mocks, main_mock, max_concurrent, api_metrics=None):
    """Runs every check; raises AuditError listing all the violations found.
    accepted: call ids answered 201; mocks: {name: /api/stats of a mock};
    main_mock: the name of the mock whose dials are expected to be recorded
    as attempts (the one that answers in time). Returns a summary dict."""
    problems = []

    def check(cond, msg):
        if not cond:
            problems.append(msg)

    calls = {r[0]: {"status": r[1], "attempts": int(r[2]), "max": int(r[3]),
                    "next_retry": r[4], "error": r[5]}
             for r in sql("SELECT call_id, status, attempt_count, max_attempts, "
                          "coalesce(next_retry_at::text, ''), coalesce(error_message, '') "
                          "FROM calls_calllog")}
    attempts = {}
    for r in sql("SELECT call_id, attempt, status, coalesce(external_call_id, ''), "
                 "outcome_at IS NOT NULL, coalesce(call_duration, 0) FROM calls_callattempt"):
        attempts.setdefault(r[0], {})[int(r[1])] = {
            "status": r[2], "external": r[3], "outcome": r[4] == "t", "duration": int(r[5])}
    callbacks = {}
    applied_attempts = {}  # (call_id, attempt) -> applied callbacks, when recorded
    with_attempt = has_column("calls_callback", "attempt")
    unprocessed = 0
    for r in sql("SELECT call_id, coalesce(result, ''), applied_at IS NOT NULL, "
                 "coalesce(call_duration, 0), %s FROM calls_callback"
                 % ("coalesce(attempt::text, '')" if with_attempt else "''")):
        if r[2] != "t":
            unprocessed += 1
        if r[1].startswith("applied:"):
            callbacks.setdefault(r[0], []).append((r[1][len("applied:"):], int(r[3])))
            if with_attempt:
                applied_attempts.setdefault((r[0], r[4]), 0)
                applied_attempts[(r[0], r[4])] += 1

    # 1. Every accepted call exists and is final or waiting for its retry.
    missing = [c for c in accepted if c not in calls]
    check(not missing, "%d accepted call(s) missing from calls_calllog: %s"
          % (len(missing), missing[:5]))
    bad_state = []
    for cid, c in calls.items():
        if c["status"] in ("PICKED", "FAILED"):
            continue
        if c["status"] in ("DISCONNECTED", "RNR") and c["next_retry"] and c["attempts"] < c["max"]:
            continue
        bad_state.append((cid, c["status"], c["attempts"], c["next_retry"]))
    check(not bad_state, "%d call(s) neither final nor waiting for a retry: %s"
          % (len(bad_state), bad_state[:5]))

    # Attempt rows 1..attempt_count, each earlier attempt with an outcome.
    for cid, c in calls.items():
        a = attempts.get(cid, {})
        if sorted(a) != list(range(1, c["attempts"] + 1)):
            problems.append("call %s: attempt rows %s for attempt_count %d"
                            % (cid, sorted(a), c["attempts"]))
            continue
        for n in range(1, c["attempts"]):
            if not a[n]["outcome"] or a[n]["status"] not in ("DISCONNECTED", "RNR"):
                problems.append("call %s: earlier attempt %d is %s without a retryable outcome"
                                % (cid, n, a[n]["status"]))

    # 2. Each attempt sent to the provider at most once; what was dialled by
    # the main mock is recorded, and what is recorded was dialled.
    dialled = {}
    for name, stats in mocks.items():
        for key, v in stats["by_key"].items():
            check(v["dials"] <= 1, "mock %s dialled key %s %d times" % (name, key, v["dials"]))
            if v["dials"] > 0:
                check(key not in dialled, "key %s dialled by two providers (%s, %s)"
                      % (key, dialled.get(key), name))
                dialled[key] = name
    recorded = {"%s:%d" % (cid, n) for cid, a in attempts.items() for n, x in a.items()
                if x["external"]}
    not_dialled = sorted(recorded - set(dialled))
    check(not not_dialled, "%d attempt(s) with an external id that no provider dialled: %s"
          % (len(not_dialled), not_dialled[:5]))
    unrecorded = sorted(k for k, m in dialled.items() if m == main_mock and k not in recorded)
    check(not unrecorded, "%d dial(s) of %s never recorded as an attempt's external id: %s"
          % (len(unrecorded), main_mock, unrecorded[:5]))

    # 3. Each callback applied once: the applied callbacks of a call are the
    # attempts whose outcome came from a callback.
    check(unprocessed == 0, "%d callback(s) recorded but never processed" % unprocessed)
    for cid, c in calls.items():
        a = attempts.get(cid, {})
        with_outcome = sum(1 for x in a.values() if x["outcome"])
        not_by_callback = 1 if c["status"] == "FAILED" and c["error"] in (INITIATE_FAILED, STALE) \
            else 0
        applied = callbacks.get(cid, [])
        if len(applied) != with_outcome - not_by_callback:
            problems.append("call %s (%s, %d attempts, %r): %d applied callback(s) for %d "
                            "attempt outcome(s) from callbacks: %s"
                            % (cid, c["status"], c["attempts"], c["error"], len(applied),
                               with_outcome - not_by_callback, applied))
        picked = sum(1 for s, _ in applied if s == "PICKED")
        check(picked == (1 if c["status"] == "PICKED" else 0),
              "call %s is %s with %d applied PICKED callback(s)" % (cid, c["status"], picked))
    orphan = sorted(set(callbacks) - set(calls))
    check(not orphan, "applied callbacks for unknown calls: %s" % orphan[:5])
    if with_attempt:
        # The callback rows name their attempt: at most one applied per
        # attempt, and it is an attempt that has its outcome.
        twice = sorted(k for k, n in applied_attempts.items() if n > 1)
        check(not twice, "attempts with more than one applied callback: %s" % twice[:5])
        unnamed = sorted(k for k in applied_attempts if k[1] == "")
        check(not unnamed, "applied callbacks without their attempt: %s" % unnamed[:5])
        no_outcome = sorted(k for k in applied_attempts if k[1] != "" and not attempts.get(
            k[0], {}).get(int(k[1]), {}).get("outcome"))
        check(not no_outcome, "applied callbacks for attempts without an outcome: %s"
              % no_outcome[:5])

    # 4. Metrics (all days: the database is fresh for each script).
    m = sql("SELECT coalesce(sum(total_calls_initiated),0), coalesce(sum(total_calls_picked),0), "
            "coalesce(sum(total_calls_disconnected),0), coalesce(sum(total_calls_rnr),0), "
            "coalesce(sum(total_calls_failed),0), coalesce(sum(total_retries),0), "
            "coalesce(sum(total_call_duration),0), coalesce(sum(dlq_entries_created),0), "
            "coalesce(max(peak_concurrent_calls),0) FROM calls_callmetrics")[0]
    metrics = dict(zip(("initiated", "picked", "disconnected", "rnr", "failed", "retries",
                        "duration", "dlq", "peak"), (int(x) for x in m)))
    all_applied = [x for v in callbacks.values() for x in v]
    dlq_rows = int(scalar("SELECT count(*) FROM calls_dlqentry"))
    expected = {
        "initiated": len(calls),
        "picked": sum(1 for c in calls.values() if c["status"] == "PICKED"),
        "disconnected": sum(1 for s, _ in all_applied if s == "DISCONNECTED"),
        "rnr": sum(1 for s, _ in all_applied if s == "RNR"),
        "failed": sum(1 for c in calls.values() if c["status"] == "FAILED"),
        "retries": sum(c["attempts"] - 1 for c in calls.values()),
        "duration": sum(d for s, d in all_applied if s == "PICKED"),
        "dlq": dlq_rows,
    }
    for k, v in expected.items():
        check(metrics[k] == v, "metrics %s = %d, the tables say %d" % (k, metrics[k], v))
    check(metrics["peak"] <= max_concurrent,
          "peak_concurrent_calls %d above the limit %d" % (metrics["peak"], max_concurrent))
    # Dead letters of this run's calls (the database is fresh, the topics
    # are not: an event left uncommitted by an earlier script names a call
    # this database never had, and is rightly dead-lettered).
    ours = sql("SELECT d.original_topic, d.message_key, d.error_message FROM calls_dlqentry d "
               "JOIN calls_calllog l ON l.call_id = d.message_key")
    check(not ours, "%d dead letter(s) for calls of this run: %s" % (len(ours), ours[:5]))
    if api_metrics is not None:
        api = {"initiated": 0, "picked": 0, "disconnected": 0, "rnr": 0, "failed": 0,
               "retries": 0, "duration": 0, "dlq": 0}
        for day in api_metrics["recent_metrics"]:
            api["initiated"] += day["total_calls_initiated"]
            api["picked"] += day["total_calls_picked"]
            api["disconnected"] += day["total_calls_disconnected"]
            api["rnr"] += day["total_calls_rnr"]
            api["failed"] += day["total_calls_failed"]
            api["retries"] += day["total_retries"]
            api["duration"] += day["total_call_duration"]
            api["dlq"] += day["dlq_entries_created"]
        for k, v in api.items():
            check(v == metrics[k], "GET /api/v1/metrics/ says %s = %d, the table %d"
                  % (k, v, metrics[k]))

    # 5. The concurrency count matches the database.
    key = concurrency_key()
    count = redis("GET", key)
    members = slot_members()
    per_attempt = not members or any(SLOT_MEMBER.match(m) for m in members)
    in_flight = {("%s:%d" % (cid, c["attempts"])) if per_attempt else cid
                 for cid, c in calls.items() if c["status"] in IN_FLIGHT}
    check(count == str(len(in_flight)), "Redis %s = %r, calls in flight in the database: %d"
          % (key, count, len(in_flight)))
    check(members == in_flight, "Redis slot set %s differs from the calls in flight: "
          "extra %s, missing %s" % (key + ":slots", sorted(members - in_flight)[:5],
                                    sorted(in_flight - members)[:5]))
    if api_metrics is not None:
        check(api_metrics["current_concurrent_calls"] == len(in_flight),
              "GET /api/v1/metrics/ current_concurrent_calls = %d, in flight %d"
              % (api_metrics["current_concurrent_calls"], len(in_flight)))

    # 6. The outbox is drained.
    pending = int(scalar("SELECT count(*) FROM calls_outbox WHERE sent_at IS NULL"))
    check(pending == 0, "%d outbox event(s) never published" % pending)

    if problems:
        raise AuditError("audit failed (%d problem(s)):\n  - %s"
                         % (len(problems), "\n  - ".join(problems[:40])))
    by_status = {}
    for c in calls.values():
        by_status[c["status"]] = by_status.get(c["status"], 0) + 1
    return {"calls": len(calls), "by_status": by_status, "metrics": metrics,
            "callbacks_applied": len(all_applied)}
