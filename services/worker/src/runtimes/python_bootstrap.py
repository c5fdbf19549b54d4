"""Nimbus Python runtime: loads `module.function` from LAMBDA_TASK_ROOT and serves
invocations through the Lambda Runtime API (shipped with the worker)."""
import http.client
import importlib
import json
import os
import sys
import time
import traceback

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"
_conn = None


def _request(method, path, body=None, headers=None):
    global _conn
    for attempt in (0, 1):
        if _conn is None:
            _conn = http.client.HTTPConnection(API)
        try:
            _conn.request(method, BASE + path, body=body, headers=headers or {})
            resp = _conn.getresponse()
            data = resp.read()
            return resp, data
        except (ConnectionError, http.client.HTTPException):
            _conn = None
            if attempt:
                raise


def _error_doc(exc, error_type=None):
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
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
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


def main():
    handler = _load_handler()
    while True:
        resp, body = _request("GET", "/invocation/next")
        headers = {k: v for k, v in resp.getheaders()}
        # header names arrive lower-cased from some servers: normalise
        headers = {"-".join(p.capitalize() for p in k.split("-")): v for k, v in headers.items()}
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
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
