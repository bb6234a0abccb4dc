"""Shared helpers of the Python end-to-end tests: stubs generated from
proto/ at test time (python3-grpc-tools), a channel to the server under
test, and direct looks at PostgreSQL and Redis for audits."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKEN = "dev-token-12345"
AUTH = (("x-auth-token", TOKEN),)


def load_stubs():
    """Generates call_manager_pb2/_grpc into a temp dir and imports them."""
    out = tempfile.mkdtemp(prefix="ccm-pystubs-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
         "--python_out=" + out, "--grpc_python_out=" + out,
         "callmanager/v1/call_manager.proto"],
        check=True)
    for d in ("callmanager", "callmanager/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    from callmanager.v1 import call_manager_pb2, call_manager_pb2_grpc  # noqa
    return call_manager_pb2, call_manager_pb2_grpc


def target():
    return "127.0.0.1:%s" % os.environ.get("GRPC_PORT", "50051")


def psql(sql):
    """Runs one query as the application role; returns stdout stripped."""
    env = dict(os.environ)
    r = subprocess.run(
        ["psql", "-X", "-A", "-t", "-h", os.environ.get("DB_HOST", "127.0.0.1"),
         "-p", os.environ.get("DB_PORT", "5432"), "-U", os.environ.get("DB_USER", "campaign_user"),
         "-d", os.environ.get("DB_NAME", "campaign_db"), "-c", sql],
        check=True, capture_output=True, text=True, env=env)
    return r.stdout.strip()


def redis(*args):
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    r = subprocess.run(["redis-cli", "-h", host, "-p", port] + list(args),
                       check=True, capture_output=True, text=True)
    return r.stdout.strip()
