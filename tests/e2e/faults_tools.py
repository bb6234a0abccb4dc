"""Tools of the fault tests (tests/e2e/faults.py): the private servers
(stop one, bring the stack back), ccm processes started by the test, and a
steady stream of initiate-call requests over REST whose every answer is
recorded for the scenario's assertions. Standard library only; everything is
on loopback and every port comes from the environment (scripts/test-env.sh).
"""
import concurrent.futures
import ctypes
import json
import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from rest_env import base_url

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CCM = os.environ.get("CCM_BIN", os.path.join(ROOT, "build", "ccm"))
LOG_DIR = os.environ.get("LOG_DIR", "var/test/logs")
TOKEN = "dev-token-12345"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def log(msg):
    print("[faults %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# ------------------------------------------------------------------ servers ---

class Servers:
    """The stack's PostgreSQL, Redis and Kafka, as scripts/stack.sh knows them."""

    def __init__(self):
        self.started_file = tempfile.mktemp(prefix="ccm-faults-started-")
        out = self.stack("env", check=True).stdout
        self.env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.var = self.env["CCM_VAR_DIR"]
        self.pg_local = self.env["POSTGRES"].startswith("local")
        self.pg_data = self.env["POSTGRES"].split("data=", 1)[1] if self.pg_local else None
        self.redis_local = self.env["REDIS"].startswith("local")
        host, port = self.env["REDIS"].split()[1].rsplit(":", 1)
        self.redis_host, self.redis_port = host, int(port)
        self.kafka_local = self.env["KAFKA"].startswith("local")
        self.kafka_port = int(os.environ["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
        self.db_port = int(os.environ.get("DB_PORT", "5432"))

    def stack(self, *args, check=False):
        # The servers this test restarts are not recorded as started by
        # `make test` (CCM_STARTED_FILE): its own record stays as it was.
        env = dict(os.environ, CCM_STARTED_FILE=self.started_file)
        r = subprocess.run([os.path.join(ROOT, "scripts", "stack.sh")] + list(args), cwd=ROOT,
                           env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError("stack.sh %s failed:\n%s%s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def all_up(self):
        return self.stack("status").returncode == 0

    def restore(self):
        """Starts whatever server is down (stack.sh start reuses the others)."""
        if self.all_up():
            return
        log("restoring the stack (scripts/stack.sh start)")
        r = self.stack("start")
        if r.returncode != 0:
            raise AssertionError("could not restore the stack:\n%s%s" % (r.stdout, r.stderr))

    def start(self, *names):
        """Starts these servers (postgres, redis, kafka) if they are down."""
        r = self.stack("start", *names)
        if r.returncode != 0:
            raise AssertionError("stack.sh start %s failed:\n%s%s"
                                 % (" ".join(names), r.stdout, r.stderr))

    def cleanup(self):
        if os.path.exists(self.started_file):
            os.unlink(self.started_file)

    # Redis
    def stop_redis(self):
        subprocess.run(["redis-cli", "-h", self.redis_host, "-p", str(self.redis_port),
                        "shutdown", "nosave"], capture_output=True, timeout=30)
        wait_for(lambda: not port_open(self.redis_port), 20, "Redis to stop")

    # PostgreSQL
    def pg_ctl(self, *args):
        r = subprocess.run(["runuser", "-u", "postgres", "--",
                            "/usr/lib/postgresql/15/bin/pg_ctl", "-D", self.pg_data] + list(args),
                           cwd="/", capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=120)
        if r.returncode != 0:
            raise AssertionError("pg_ctl %s failed: %s%s" % (" ".join(args), r.stdout, r.stderr))

    def stop_postgres(self):
        self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    # Kafka
    def kafka_pid(self):
        with open(os.path.join(self.var, "kafka", "pid")) as f:
            return int(f.read().split()[0])

    def stop_kafka(self):
        pid = self.kafka_pid()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not process_alive(pid), 60, "the Kafka broker to stop")


def process_alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 (a dependency may be down meanwhile)
            pass
        if time.time() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# ------------------------------------------------------------- kafka admin ---
# Topics of scenario 5 are created and deleted with two plain Kafka protocol
# requests (CreateTopics v2, DeleteTopics v1): the broker's Java tools take
# over 10 s per call on this machine.

def _kstr(text):
    b = text.encode()
    return struct.pack(">h", len(b)) + b


def _kafka_request(api_key, version, body, timeout=20):
    host, port = os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)
    msg = struct.pack(">hhi", api_key, version, 7) + _kstr("ccm-faults") + body
    with socket.create_connection((host.replace("PLAINTEXT://", ""), int(port)),
                                  timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(msg)) + msg)

        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("the Kafka broker closed the connection")
                buf += chunk
            return buf
        data = read(struct.unpack(">i", read(4))[0])
    return data[4:]  # after the correlation id


def _kafka_topic_errors(resp, with_message):
    off = 4  # throttle_time_ms
    count = struct.unpack_from(">i", resp, off)[0]
    off += 4
    errors = {}
    for _ in range(count):
        n = struct.unpack_from(">h", resp, off)[0]
        name = resp[off + 2:off + 2 + n].decode()
        off += 2 + n
        errors[name] = struct.unpack_from(">h", resp, off)[0]
        off += 2
        if with_message:
            n = struct.unpack_from(">h", resp, off)[0]
            off += 2 + max(n, 0)
    return errors


def kafka_create_topics(topics):
    """topics: [(name, partitions)]. 0 = created, 36 = already exists."""
    body = struct.pack(">i", len(topics))
    for name, partitions in topics:
        body += _kstr(name) + struct.pack(">ihii", partitions, 1, 0, 0)
    body += struct.pack(">ib", 15000, 0)
    errors = _kafka_topic_errors(_kafka_request(19, 2, body), True)
    bad = {k: v for k, v in errors.items() if v not in (0, 36)}
    if bad:
        raise AssertionError("CreateTopics failed (Kafka error codes): %s" % bad)


def kafka_delete_topics(names):
    body = struct.pack(">i", len(names)) + b"".join(_kstr(n) for n in names) + \
        struct.pack(">i", 15000)
    return _kafka_topic_errors(_kafka_request(20, 1, body), False)


# ---------------------------------------------------------------- processes ---

def _die_with_parent():
    # PR_SET_PDEATHSIG: a process started here never outlives the test.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Proc:
    """One `ccm CMD ...` started by the test, output in LOG_DIR/<name>.out."""
    counter = {}

    def __init__(self, name, args, env=None):
        n = Proc.counter.get(name, 0) + 1
        Proc.counter[name] = n
        self.name = name
        self.path = os.path.join(LOG_DIR, "%s-%d.out" % (name, n))
        self.out = open(self.path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen([CCM] + list(args), stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd=ROOT,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.out.close()

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self.out.close()
        return rc

    def sanitizer_report(self):
        with open(self.path, errors="replace") as f:
            text = f.read()
        return text if any(m in text for m in SANITIZER_MARKS) else None


def children(parent_pid):
    """{command: pid} of the processes `ccm start-all` (parent_pid) runs."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(parent_pid)],
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, args = line.strip().split(None, 1)
        parts = args.split()
        if len(parts) >= 2 and parts[0].endswith("ccm"):
            found[parts[1]] = int(pid)
    return found


def mock_stats(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/api/stats" % port, timeout=10) as r:
        return json.loads(r.read())


# ------------------------------------------------------------------- stream ---

def post_json(path, body, timeout=20, base=None):
    """POST to the gateway; (status, parsed body or raw text, headers) or
    ("conn", error text, {}) when the connection itself failed."""
    req = urllib.request.Request((base or base_url()) + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "X-Auth-Token": TOKEN})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
            return r.status, json.loads(payload), dict(r.headers)
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return e.code, parsed, dict(e.headers)
    except Exception as e:  # noqa: BLE001 (refused, reset, timeout: all recorded)
        return "conn", "%s: %s" % (type(e).__name__, e), {}


class Result:
    __slots__ = ("number", "t0", "t1", "status", "body", "headers", "phase")

    def __init__(self, number, t0, t1, status, body, headers, phase):
        self.number, self.t0, self.t1 = number, t0, t1
        self.status, self.body, self.headers, self.phase = status, body, headers, phase

    @property
    def reason(self):
        try:
            return self.body["error"]["details"].get("reason")
        except (TypeError, KeyError, AttributeError):
            return None

    @property
    def call_id(self):
        return self.body["call_id"] if self.status == 201 else None

    def __repr__(self):
        return "<%s %s %.2f-%.2f %s %s>" % (self.phase, self.number, self.t0, self.t1,
                                            self.status, str(self.body)[:160])


class Stream:
    """A steady stream of initiate-call requests, `rate` per second, each to
    a new number. A 429 concurrency_limit is retried (same number); any other
    answer (201, 503, a refused connection...) is recorded and the stream
    moves on to the next number. Results are kept for the whole run."""

    def __init__(self, campaign, first_number=0):
        self.campaign = campaign
        self.next_number = first_number
        self.results = []
        self.lock = threading.Lock()
        self.phase = "idle"
        self.rate = 0.0
        self.pool = concurrent.futures.ThreadPoolExecutor(16)
        self.stop_event = threading.Event()
        self.thread = None
        self.inflight = 0

    def number(self):
        with self.lock:
            self.next_number += 1
            return "+1%03d%07d" % (300 + self.next_number // 10000000, self.next_number % 10000000)

    def one(self, number):
        try:
            for _ in range(600):
                t0 = time.time()
                status, body, headers = post_json("/api/v1/initiate-call/",
                                                  {"phone_number": number,
                                                   "campaign_id": self.campaign})
                r = Result(number, t0, time.time(), status, body, headers, self.phase)
                with self.lock:
                    self.results.append(r)
                if status == 429 and r.reason == "concurrency_limit":
                    time.sleep(0.5)
                    continue
                return r
        finally:
            with self.lock:
                self.inflight -= 1

    def _run(self):
        next_at = time.time()
        while not self.stop_event.is_set():
            if self.rate > 0:
                with self.lock:
                    self.inflight += 1
                self.pool.submit(self.one, self.number())
                next_at += 1.0 / self.rate
            else:
                next_at = time.time() + 0.1
            delay = next_at - time.time()
            if delay > 0:
                self.stop_event.wait(delay)
            elif delay < -1:
                next_at = time.time()  # fell behind (a stalled pool): do not burst

    def start(self, rate, phase):
        self.rate, self.phase = rate, phase
        if self.thread is None:
            self.stop_event.clear()
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def pause(self, drain_timeout=60):
        """Stops issuing requests and waits for the ones in flight."""
        self.rate = 0.0
        wait_for(lambda: self.inflight == 0, drain_timeout, "the stream's requests to finish")

    def close(self):
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
        self.pool.shutdown(wait=True)

    def select(self, t_from=None, t_to=None, phase=None):
        """Results whose request started at/after t_from and ended by t_to."""
        with self.lock:
            rs = list(self.results)
        return [r for r in rs if (t_from is None or r.t0 >= t_from)
                and (t_to is None or r.t1 <= t_to) and (phase is None or r.phase == phase)]

    def accepted(self):
        return [r.call_id for r in self.select() if r.status == 201]


def random_seed():
    seed = os.environ.get("FAULTS_SEED")
    return int(seed) if seed else random.SystemRandom().randrange(1, 1 << 30)
