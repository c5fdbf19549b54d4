"""Nimbus Python runtime: loads `module.function` from LAMBDA_TASK_ROOT and serves
invocations through the Lambda Runtime API (shipped with the worker)."""
import importlib
import json
import os
import socket
import sys
import time

BASE = "/2018-06-01/runtime"


class _Conn:
    """A minimal keep-alive HTTP/1.1 client for the Runtime API. (http.client costs
    ~30 ms of imports, half of a cold start.)"""

    def __init__(self, api):
        host, _, port = api.rpartition(":")
        self.addr = (host, int(port))
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("runtime API closed the connection")
        self.buf += chunk

    def request(self, method, path, body=None, headers=None):
        data = body or b""
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(self.addr)
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %d\r\n" % (
                    method, path, self.addr[0], self.addr[1], len(data))
                for k, v in (headers or {}).items():
                    head += "%s: %s\r\n" % (k, v)
                self.sock.sendall(head.encode("latin-1") + b"\r\n" + data)
                return self._response()
            except (OSError, ConnectionError, ValueError):
                self.close()
                if attempt:
                    raise

    def _response(self):
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._recv()
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._recv()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    return status, headers, body
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._recv()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body


_conn = None  # set by main() from AWS_LAMBDA_RUNTIME_API


def _request(method, path, body=None, headers=None):
    return _conn.request(method, BASE + path, body, headers)


def _error_doc(exc, error_type=None):
    import traceback  # only when something failed: it is not free to import
    tb = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_list(tb)],
    }


def _log_error(doc):
    # Lambda prints "[ERROR] Type: message" followed by the traceback.
    print("[ERROR] %s: %s" % (doc["errorType"], doc["errorMessage"]), file=sys.stderr)
    if doc.get("stackTrace"):
        print("Traceback (most recent call last):\n" + "\n".join(doc["stackTrace"]), file=sys.stderr)
    sys.stderr.flush()


def _init_error(doc):
    _log_error(doc)
    _request("POST", "/init/error", json.dumps(doc).encode(),
             {"Content-Type": "application/json",
              "Lambda-Runtime-Function-Error-Type": doc["errorType"]})
    sys.exit(1)


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms") or 0)
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _load_handler():
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    handler = os.environ.get("_HANDLER", "")
    try:
        module_name, func_name = handler.rsplit(".", 1)
    except ValueError:
        _init_error({"errorMessage": "Bad handler '%s': not enough values to unpack" % handler,
                     "errorType": "Runtime.MalformedHandlerName", "stackTrace": []})
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except SyntaxError as exc:
        _init_error(_error_doc(exc, "Runtime.UserCodeSyntaxError"))
    except ImportError as exc:
        doc = _error_doc(exc, "Runtime.ImportModuleError")
        doc["errorMessage"] = "Unable to import module '%s': %s" % (module_name, exc)
        _init_error(doc)
    except Exception as exc:  # an exception raised by module-level code
        _init_error(_error_doc(exc))
    func = getattr(module, func_name, None)
    if func is None:
        _init_error({"errorMessage": "Handler '%s' missing on module '%s'" % (func_name, module_name),
                     "errorType": "Runtime.HandlerNotFound", "stackTrace": []})
    return func


def _await_order(fd):
    """In a box made ahead (`--await-order FD`): the interpreter and the imports above
    are ready before the function is known, as root. The order comes on the socket
    FD with the output pipe: take the function's output, memory limit, uid (then no
    new privileges, death with the box's init) and environment, as the worker does
    for a runtime it starts itself, then go on as any cold start."""
    import ctypes
    import resource
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(fileno=fd)
    sock.send(b"ready")  # the init passes it on: the box may now be handed a function
    msg, fds, _, _ = socket.recv_fds(sock, 256 * 1024, 1)
    sock.close()
    if not msg:
        os._exit(0)  # the box was not needed
    # NUL-terminated fields: uid, as_limit, tmp_mb, code, runtime, program, the
    # number of args, the args, then the environment (the worker's Order).
    fields = [f.decode("utf-8", "surrogateescape") for f in msg[:-1].split(b"\0")]
    uid = None if fields[0] == "-" else int(fields[0])
    as_limit = int(fields[1])
    env = fields[7 + int(fields[6]):]
    os.dup2(fds[0], 1)
    os.dup2(fds[0], 2)
    os.close(fds[0])
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # PR_SET_NO_NEW_PRIVS; PR_SET_PDEATHSIG, SIGKILL; PR_SET_DUMPABLE (a uid change
    # in the process clears it, which an exec'd runtime would have had again: its
    # /proc files would stay root's).
    for option, arg in ((38, 1), (1, 9), (4, 1)):
        if libc.prctl(option, arg, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(%d)" % option)
    os.environ.clear()
    for kv in env:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    time.tzset()
    os.chdir(os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    del sys.argv[1:]


def main():
    global _conn
    if sys.argv[1:2] == ["--await-order"]:
        _await_order(int(sys.argv[2]))
    _conn = _Conn(os.environ["AWS_LAMBDA_RUNTIME_API"])
    handler = _load_handler()
    while True:
        _, headers, body = _request("GET", "/invocation/next")
        request_id = headers.get("lambda-runtime-aws-request-id")
        ctx = Context(headers)
        try:
            event = json.loads(body) if body else {}
            result = handler(event, ctx)
            try:
                out = json.dumps(result).encode()
            except (TypeError, ValueError) as exc:
                raise _MarshalError("Unable to marshal response: %s" % exc) from None
            sys.stdout.flush()
            sys.stderr.flush()
            _request("POST", "/invocation/%s/response" % request_id, out,
                     {"Content-Type": "application/json"})
        except Exception as exc:
            doc = _error_doc(exc, "Runtime.MarshalError" if isinstance(exc, _MarshalError) else None)
            _log_error(doc)
            sys.stdout.flush()
            _request("POST", "/invocation/%s/error" % request_id, json.dumps(doc).encode(),
                     {"Content-Type": "application/json",
                      "Lambda-Runtime-Function-Error-Type": doc["errorType"]})


class _MarshalError(Exception):
    pass


if __name__ == "__main__":
    main()
