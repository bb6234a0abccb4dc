"""REST helpers of the end-to-end tests: JSON requests to the gateway with
the standard library only (urllib), as a curl user would send them."""
import json
import os
import time
import urllib.error
import urllib.request

TOKEN = "dev-token-12345"


def base_url():
    return "http://127.0.0.1:%s" % os.environ.get("HTTP_PORT", "8000")


def mock_url():
    return "http://127.0.0.1:%s" % os.environ.get("MOCK_PORT", "8001")


def request(method, path, body=None, token=TOKEN, headers=None, base=None, raw=None,
            timeout=30):
    """Returns (status, parsed JSON or None, response headers)."""
    h = {"Content-Type": "application/json"}
    if token is not None:
        h["X-Auth-Token"] = token
    h.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request((base or base_url()) + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
            return r.status, (json.loads(payload) if payload else None), dict(r.headers)
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload
        return e.code, parsed, dict(e.headers)


def wait_until(predicate, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
