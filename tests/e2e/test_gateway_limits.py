"""Hostile clients against the REST gateway (SPEC 4: header block 16 KiB,
body 1 MiB, GATEWAY_MAX_CONNECTIONS, GATEWAY_IDLE_TIMEOUT_SECONDS): slow-loris
clients, 10,000 idle connections, oversized header blocks, oversized and
endless bodies. Meanwhile a well-behaved client keeps getting correct
answers (100 x GET /api/v1/metrics/, p99 under a generous 2 s: a correctness
test, not a benchmark); afterwards the idle connections are closed by the
idle timeout and the gateway's descriptors and memory come back.

Run by test_gateway_limits.sh with GATEWAY_IDLE_TIMEOUT_SECONDS set low and
GATEWAY_PID naming the gateway process.
"""
import errno
import http.client
import json
import os
import resource
import select
import socket
import subprocess
import threading
import time
import unittest

PORT = int(os.environ.get("HTTP_PORT", "8000"))
GATEWAY_PID = int(os.environ["GATEWAY_PID"])
IDLE_S = int(os.environ.get("GATEWAY_IDLE_TIMEOUT_SECONDS", "30"))
TOKEN = "dev-token-12345"
P99_LIMIT_S = 2.0
IDLE_CONNECTIONS = int(os.environ.get("GATEWAY_TEST_IDLE_CONNECTIONS", "10000"))


def log(msg):
    print("[gateway-limits %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def gateway_fds():
    return len(os.listdir("/proc/%d/fd" % GATEWAY_PID))


def gateway_status(field):
    with open("/proc/%d/status" % GATEWAY_PID) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kib():
    return gateway_status("VmRSS")


def wait_for(predicate, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def connect():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def is_closed(sock, timeout=0.0):
    """True when the peer closed (EOF or reset); data is read and dropped."""
    try:
        poller = select.poll()  # select() cannot watch descriptors >= 1024
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        if not poller.poll(timeout * 1000):
            return False
        sock.setblocking(False)
        while True:
            try:
                if sock.recv(65536) == b"":
                    return True
            except BlockingIOError:
                return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError as e:
        return e.errno in (errno.ECONNRESET, errno.EPIPE)


def read_response(sock, timeout=10):
    """Reads until the peer closes or timeout; returns (status or None, headers
    text, body bytes, closed by the peer)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    # The whole answer: wait a little for the close, if any.
                    closed = is_closed(sock, 1.0)
                    break
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    head, _, body = data.partition(b"\r\n\r\n")
    status = None
    if head.startswith(b"HTTP/1."):
        status = int(head.split()[1])
    return status, head.decode("latin-1"), body, closed


def good_request():
    """One well-behaved GET /api/v1/metrics/; returns its latency (s)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=15)
    try:
        conn.request("GET", "/api/v1/metrics/", headers={"X-Auth-Token": TOKEN})
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    assert r.status == 200, (r.status, body[:300])
    m = json.loads(body)
    assert {"current_concurrent_calls", "max_concurrent_calls", "system_status",
            "recent_metrics"} <= set(m), m
    assert len(m["recent_metrics"]) == 7, m
    return elapsed


class GatewayLimits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, IDLE_CONNECTIONS + 1000) if hard != resource.RLIM_INFINITY \
            else IDLE_CONNECTIONS + 1000
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
        cls.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        for _ in range(20):
            good_request()
        time.sleep(0.5)
        cls.base_fds = gateway_fds()
        cls.base_rss = rss_kib()
        cls.base_threads = gateway_status("Threads")
        with open("/proc/%d/maps" % GATEWAY_PID) as f:
            cls.asan = "libasan" in f.read()
        log("gateway pid %d: %d fds, %d KiB RSS, %d threads; idle timeout %d s; test fd limit %d"
            % (GATEWAY_PID, cls.base_fds, cls.base_rss, cls.base_threads, IDLE_S, cls.fd_limit))

    def probe(self, what, n=100):
        """n well-behaved requests: all correct, p99 under the bound."""
        latencies = sorted(good_request() for _ in range(n))
        p99 = latencies[max(0, int(n * 0.99) - 1)]
        log("%s: well-behaved client p50 %.1f ms, p99 %.1f ms, max %.1f ms"
            % (what, latencies[n // 2] * 1000, p99 * 1000, latencies[-1] * 1000))
        self.assertLess(p99, P99_LIMIT_S, what)

    def wait_fds_back(self, what, slack=4):
        wait_for(lambda: gateway_fds() <= self.base_fds + slack, IDLE_S + 10,
                 "the gateway's descriptors to come back (%s): %d now, %d before"
                 % (what, gateway_fds(), self.base_fds))

    # ---------------------------------------------------------------------

    def test_1_slow_loris(self):
        head = ("GET /api/v1/metrics/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: %s\r\n"
                "X-Slow: " % TOKEN).encode()
        socks = [connect() for _ in range(200)]
        stop = threading.Event()
        sent = [0]

        def drip():
            # One byte per socket every 0.5 s: never a complete header block.
            i = 0
            while not stop.is_set():
                byte = head[i:i + 1] if i < len(head) else b"a"
                for s in socks:
                    try:
                        s.send(byte)
                    except OSError:
                        pass
                sent[0] += 1
                i += 1
                stop.wait(0.5)

        t = threading.Thread(target=drip)
        t.start()
        try:
            time.sleep(1)
            self.probe("200 slow-loris clients")
            time.sleep(max(0.0, IDLE_S + 1.5 - 1))
            alive = sum(1 for s in socks if not is_closed(s))
            log("slow-loris: %d of 200 still open after %d bytes each" % (alive, sent[0]))
            self.probe("200 slow-loris clients, past the idle timeout")
        finally:
            stop.set()
            t.join()
        # Once they stop sending they are idle: closed by the idle timeout.
        deadline = time.time() + IDLE_S + 5
        while time.time() < deadline and not all(is_closed(s) for s in socks if s.fileno() >= 0):
            time.sleep(0.2)
        still = sum(1 for s in socks if not is_closed(s))
        self.assertEqual(still, 0, "stalled slow-loris connections left open")
        for s in socks:
            s.close()
        self.wait_fds_back("slow-loris")

    def open_idle(self, n):
        socks = []
        t0 = time.time()
        for _ in range(n):
            s = socket.socket()
            s.settimeout(10)
            s.connect(("127.0.0.1", PORT))
            socks.append(s)
        return socks, time.time() - t0

    def test_2_ten_thousand_idle_connections(self):
        n = IDLE_CONNECTIONS
        self.assertGreater(self.fd_limit, n + 100, "this test needs %d descriptors" % n)
        rss_after = []
        for cycle in (1, 2):
            t0 = time.time()
            socks, took = self.open_idle(n)
            # All accepted by the gateway (not left in the listen backlog),
            # none refused, before the first ones reach the idle timeout.
            fds = gateway_fds()
            while fds < self.base_fds + n and time.time() - t0 < IDLE_S - 0.5:
                time.sleep(0.05)
                fds = gateway_fds()
            log("cycle %d: %d idle connections opened in %.1f s; gateway holds %d fds after "
                "%.1f s, RSS %d KiB" % (cycle, n, took, fds, time.time() - t0, rss_kib()))
            self.assertGreaterEqual(fds, self.base_fds + n - 10,
                                    "the gateway did not hold %d connections at once" % n)
            if cycle == 1:
                self.probe("%d idle connections" % n, n=100)
            # The idle timeout closes every one of them; the descriptors and
            # the connection memory are given back.
            self.wait_fds_back("%d idle connections" % n)
            t0 = time.time()
            open_left = [s for s in socks if not is_closed(s)]
            while open_left and time.time() - t0 < 5:
                time.sleep(0.2)
                open_left = [s for s in open_left if not is_closed(s)]
            self.assertEqual(len(open_left), 0, "idle connections the client still sees open")
            for s in socks:
                s.close()
            time.sleep(0.5)
            rss_after.append(rss_kib())
            log("cycle %d: all closed; gateway %d fds, RSS %d KiB (baseline %d KiB)"
                % (cycle, gateway_fds(), rss_after[-1], self.base_rss))
        # Memory: freed connection memory stays in the allocator's arenas
        # (RSS does not fall back to the baseline, and varies from wave to
        # wave), so only a bound is checked here: a wave's connection pools
        # never given back would exceed it. Leaks proper are LeakSanitizer's
        # job in the ASan run (where the quarantine keeps memory anyway).
        if not self.asan:
            self.assertLess(max(rss_after), self.base_rss + 128 * 1024,
                            "gateway RSS after the idle connections were closed")
        self.probe("after the idle connections")

    def header_request(self, size):
        return ("GET /api/v1/metrics/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: %s\r\n"
                "X-Big: %s\r\n\r\n" % (TOKEN, "a" * size)).encode()

    def oversized(self, size):
        s = connect()
        try:
            s.sendall(self.header_request(size))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, head, body, closed = read_response(s)
        s.close()
        return status, head, body, closed

    def test_3_oversized_headers(self):
        # Just under 16 KiB: served.
        status, _, body, _ = self.oversized(15 * 1024)
        self.assertEqual(status, 200, body[:200])
        # Over 16 KiB: ccm's 431 in the JSON shape, connection closed.
        status, head, body, closed = self.oversized(17 * 1024)
        self.assertEqual(status, 431, head)
        self.assertEqual(json.loads(body)["error"]["code"], "request_header_fields_too_large")
        self.assertTrue(closed, "connection left open after 431")
        # Far over what MHD's connection memory holds: its own 431, closed.
        status, head, body, closed = self.oversized(64 * 1024)
        self.assertEqual(status, 431, head)
        self.assertTrue(closed, "connection left open after MHD's 431")
        # Meanwhile the well-behaved client is served.
        stop = threading.Event()

        def spam():
            while not stop.is_set():
                self.oversized(64 * 1024)
                self.oversized(17 * 1024)
        threads = [threading.Thread(target=spam) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            self.probe("oversized header blocks")
        finally:
            stop.set()
            for t in threads:
                t.join()

    def test_4_every_oversized_header_block_is_answered(self):
        # Every header block over 16 KiB is refused: a 431 (ccm's or MHD's)
        # and a closed connection, or, in a band of about 250 bytes near
        # 32 KiB where libmicrohttpd's connection memory holds the block but
        # not the answer, a connection the library closes without an answer
        # (SPEC 4.1 exempts library-generated refusals). Never a hang, never
        # a request reaching ccm.
        wrong = []
        for size in list(range(16 * 1024 + 100, 40 * 1024, 512)) + [24100, 32300, 32400, 32500]:
            status, head, _, closed = self.oversized(size)
            if not closed or status not in (431, None):
                wrong.append((size, status, closed))
        self.assertEqual(wrong, [], "(X-Big value bytes, status, closed) not refused")

    def send_chunked(self, total, chunk=64 * 1024):
        """POSTs a chunked body of `total` bytes; returns (status, seconds,
        error while sending)."""
        s = connect()
        t0 = time.time()
        err = None
        try:
            s.sendall(("POST /api/v1/campaigns/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: %s\r\n"
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                       % TOKEN).encode())
            piece = b"%x\r\n" % chunk + b"a" * chunk + b"\r\n"
            for _ in range(total // chunk):
                s.sendall(piece)
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError) as e:
            err = e
        status, _, body, _ = read_response(s, timeout=15)
        s.close()
        return status, time.time() - t0, err, body

    def test_5_oversized_bodies(self):
        # Declared 2 MiB: 413 at once, before any of the body is sent.
        s = connect()
        t0 = time.time()
        s.sendall(("POST /api/v1/campaigns/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % (TOKEN, 2 * 1024 * 1024)).encode())
        status, head, body, _ = read_response(s, timeout=5)
        took = time.time() - t0
        s.close()
        self.assertEqual(status, 413, head)
        self.assertEqual(json.loads(body)["error"]["code"], "payload_too_large")
        self.assertLess(took, 2.0)
        # Chunked, 1.5 MiB: 413 at its end.
        status, took, err, body = self.send_chunked(3 * 512 * 1024)
        self.assertEqual((status, err), (413, None), body[:200])
        # Chunked, 20 MiB: refused (413) or the connection cut, quickly; the
        # gateway does not read it forever.
        status, took, err, _ = self.send_chunked(20 * 1024 * 1024)
        log("20 MiB chunked body: status %s, error %r, %.1f s" % (status, err, took))
        self.assertTrue(status == 413 or err is not None or status is None)
        self.assertLess(took, 30)
        # Meanwhile the well-behaved client is served.
        stop = threading.Event()

        def flood():
            while not stop.is_set():
                self.send_chunked(20 * 1024 * 1024)
        threads = [threading.Thread(target=flood) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            self.probe("20 MiB chunked bodies")
        finally:
            stop.set()
            for t in threads:
                t.join()

    def test_6_resources_back(self):
        time.sleep(1)
        self.wait_fds_back("the end")
        wait_for(lambda: gateway_status("Threads") <= self.base_threads + 2, 10,
                 "the gateway's threads to come back")
        rss = rss_kib()
        log("end: gateway %d fds (baseline %d), RSS %d KiB (baseline %d), %d threads"
            % (gateway_fds(), self.base_fds, rss, self.base_rss, gateway_status("Threads")))
        self.probe("at the end")


METRICS_REQUEST = ("GET /api/v1/metrics/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: %s\r\n"
                   "Connection: close\r\n\r\n" % TOKEN).encode()


class ConnectionLimit(unittest.TestCase):
    """A second gateway with GATEWAY_MAX_CONNECTIONS=100: the 101st client is
    refused at once (its connection closed), not left waiting in the listen
    backlog, and a client is served again as soon as a connection closes."""

    LIMIT = 100

    def test_connection_limit(self):
        port = PORT + 17
        env = dict(os.environ, HTTP_PORT=str(port), GATEWAY_MAX_CONNECTIONS=str(self.LIMIT),
                   GATEWAY_IDLE_TIMEOUT_SECONDS="60")
        log_dir = os.environ.get("LOG_DIR", "logs")
        with open(os.path.join(log_dir, "gateway-limit.out"), "w") as out:
            gw = subprocess.Popen([os.environ["CCM_BIN"], "gateway"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
        held = []
        try:
            wait_for(lambda: port_open(port), 20, "the second gateway")
            for _ in range(self.LIMIT):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.5)  # accepted by the gateway's threads
            for h in held:
                self.assertFalse(is_closed(h), "a connection within the limit was closed")
            # One more: closed at once, no hang.
            t0 = time.time()
            extra = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.assertTrue(is_closed(extra, timeout=3), "connection over the limit not closed")
            self.assertLess(time.time() - t0, 3)
            extra.close()
            # A connection closes: the next client is served.
            held.pop(0).close()
            time.sleep(0.3)
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(METRICS_REQUEST)
            status, _, _, _ = read_response(s, timeout=10)
            s.close()
            self.assertEqual(status, 200)
        finally:
            for h in held:
                h.close()
            gw.terminate()
            self.assertEqual(gw.wait(timeout=20), 0)
        with open(os.path.join(log_dir, "app.log")) as f:
            self.assertIn("connection refused: %d connections open (limit %d)"
                          % (self.LIMIT, self.LIMIT), f.read())


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main(verbosity=2)
