"""The Lambda API through unmodified boto3. Run by tests/tests/sdk.rs against a live
cluster: python boto3_suite.py ENDPOINT FIXTURE_DIR. Exits non-zero on the first
failed check, printing what differed."""
import base64
import io
import json
import os
import sys
import zipfile

import boto3
import botocore.config
from botocore.exceptions import ClientError

endpoint, fixtures, rust_bootstrap = sys.argv[1], sys.argv[2], sys.argv[3]
lam = boto3.client(
    "lambda",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    config=botocore.config.Config(retries={"max_attempts": 1}, read_timeout=120),
)


def zip_of(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    print("ok:", what)


def error_code(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"].get("Message", "")
    return None, 200, ""


app = open(fixtures + "/python/app.py").read()
pkg = zip_of({"app.py": app})

# create + waiters
cfg = lam.create_function(
    FunctionName="sdk-hello", Runtime="python3.12", Role="arn:aws:iam::000000000000:role/x",
    Handler="app.handler", Code={"ZipFile": pkg}, Timeout=10, MemorySize=256,
    Environment={"Variables": {"GREETING": "hi from env"}},
)
check(cfg["State"] == "Active" and cfg["LastUpdateStatus"] == "Successful", "create returns an active function")
import hashlib
check(cfg["CodeSha256"] == base64.b64encode(hashlib.sha256(pkg).digest()).decode(), "CodeSha256 is base64 sha256 of the zip")
check(cfg["CodeSize"] == len(pkg), "CodeSize is the zip's size")
check(cfg["LastModified"].endswith("+0000") and "T" in cfg["LastModified"], "LastModified in Lambda's format")
lam.get_waiter("function_active_v2").wait(FunctionName="sdk-hello")
check(error_code(lam.create_function, FunctionName="sdk-hello", Runtime="python3.12", Role="r",
                 Handler="app.handler", Code={"ZipFile": pkg})[:2] == ("ResourceConflictException", 409),
      "create on an existing name is a 409 ResourceConflictException")

# get / list
got = lam.get_function(FunctionName="sdk-hello")
check(got["Configuration"]["FunctionName"] == "sdk-hello", "get_function returns the configuration")
import urllib.request
downloaded = urllib.request.urlopen(got["Code"]["Location"]).read()
check(downloaded == pkg, "Code.Location downloads the exact zip")
check(lam.get_function_configuration(FunctionName="sdk-hello")["MemorySize"] == 256, "get_function_configuration")
names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
check("sdk-hello" in names, "list_functions lists it")

# invoke: result, warm reuse, env, context, tail logs
r = lam.invoke(FunctionName="sdk-hello", Payload=json.dumps({"name": "ada"}), LogType="Tail")
body = json.loads(r["Payload"].read())
check(r["StatusCode"] == 200 and body["greeting"] == "hello ada", "invoke returns the result")
check(body["env"] == "hi from env", "environment variables arrive")
check(body["memory"] == "256" and body["arn"].endswith(":function:sdk-hello"), "context carries memory and ARN")
check(body["remaining_ok"], "get_remaining_time_in_millis is positive and bounded")
check(body["leaked"] is None, "the worker's environment does not leak into the function")
check(r["ExecutedVersion"] == "$LATEST", "X-Amz-Executed-Version")
log = base64.b64decode(r["LogResult"]).decode()
check("hello from sdk-hello count 1" in log, "Tail log has the function's own print")
check("REPORT RequestId: " + body["request_id"] in log and "Init Duration" in log, "Tail log has the REPORT line with Init Duration on a cold start")
r2 = json.loads(lam.invoke(FunctionName="sdk-hello", Payload=b"{}")["Payload"].read())
check(r2["count"] == 2, "second invocation reuses the warm instance")

# custom runtimes through boto3: a bash bootstrap and a Rust lambda_runtime binary
def exec_zip(path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o100755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, open(path, "rb").read())
    return buf.getvalue()

lam.create_function(FunctionName="sdk-shell", Runtime="provided.al2023", Role="r", Handler="x",
                    Code={"ZipFile": exec_zip(fixtures + "/shell/bootstrap")}, Environment={"Variables": {"MY_VAR": "boto"}})
out = json.loads(lam.invoke(FunctionName="sdk-shell", Payload=b'{"k": 1}')["Payload"].read())
check(out == {"shell": True, "var": "boto", "event": {"k": 1}}, "a shell bootstrap deployed with boto3 runs: %s" % out)
lam.create_function(FunctionName="sdk-rust", Runtime="provided.al2", Role="r", Handler="bootstrap",
                    Code={"ZipFile": exec_zip(rust_bootstrap)})
out = json.loads(lam.invoke(FunctionName="sdk-rust", Payload=b'{"from": "boto3"}')["Payload"].read())
check(out["rust"] is True and out["event"] == {"from": "boto3"} and out["function"] == "sdk-rust", "a Rust lambda_runtime function deployed with boto3 runs")

# function error
lam.create_function(FunctionName="sdk-fail", Runtime="python3.11", Role="r", Handler="app.fail", Code={"ZipFile": pkg})
r = lam.invoke(FunctionName="sdk-fail", Payload=json.dumps({"why": "testing"}))
err = json.loads(r["Payload"].read())
check(r.get("FunctionError") == "Unhandled", "a raised exception gives FunctionError Unhandled")
check(err["errorType"] == "ValueError" and err["errorMessage"] == "boom: testing" and isinstance(err["stackTrace"], list), "error body has errorType, errorMessage, stackTrace")
check(not any("python_bootstrap" in l for l in err["stackTrace"]), "stack trace shows the function's frames only")

# DryRun, unknown function, bad inputs
r = lam.invoke(FunctionName="sdk-hello", InvocationType="DryRun")
check(r["StatusCode"] == 204, "DryRun gives 204")
check(error_code(lam.invoke, FunctionName="does-not-exist")[:2] == ("ResourceNotFoundException", 404), "unknown function is ResourceNotFoundException")
code, status, msg = error_code(lam.create_function, FunctionName="bad-zip", Runtime="python3.12", Role="r", Handler="a.b", Code={"ZipFile": b"this is not a zip"})
check(status == 400 and code == "InvalidParameterValueException" and "unzip" in msg, "a non-zip is a 400 naming the problem: " + msg)
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr("app.py", "def handler(e, c):\n    return 1\n")
    link = zipfile.ZipInfo("sneaky-link")
    link.external_attr = 0o120777 << 16
    z.writestr(link, "/etc/passwd")
code, status, msg = error_code(lam.create_function, FunctionName="bad-link", Runtime="python3.12", Role="r", Handler="app.handler", Code={"ZipFile": buf.getvalue()})
check(status == 400 and code == "InvalidParameterValueException" and "sneaky-link" in msg and "symbolic link" in msg, "a package with a symlink is refused naming the entry: " + msg)
code, status, msg = error_code(lam.create_function, FunctionName="bad name!", Runtime="python3.12", Role="r", Handler="a.b", Code={"ZipFile": pkg})
check(status == 400 and "functionName" in msg, "a bad function name is a 400 with a message: " + code + " " + msg)
code, status, msg = error_code(lam.create_function, FunctionName="bad-runtime", Runtime="cobol85", Role="r", Handler="a.b", Code={"ZipFile": pkg})
check(status == 400 and "cobol85" in msg, "an unknown runtime is a 400 naming it")
code, status, msg = error_code(lam.invoke, FunctionName="sdk-hello", Payload=b"{not json")
check(status == 400 and code == "InvalidRequestContentException", "a payload that is not JSON is a 400")

# payload limits: 5.9 MB works, 6.1 MB and 7 MB are refused
lam.create_function(FunctionName="sdk-size", Runtime="python3.12", Role="r", Handler="app.size", Code={"ZipFile": pkg}, MemorySize=512)
big = json.dumps({"data": "x" * int(5.9 * 1024 * 1024)})
r = lam.invoke(FunctionName="sdk-size", Payload=big)
check(json.loads(r["Payload"].read())["len"] == len(big), "a 5.9 MB payload is delivered whole")
for mb in (6.1, 7):
    code, status, _ = error_code(lam.invoke, FunctionName="sdk-size", Payload=json.dumps({"data": "x" * int(mb * 1024 * 1024)}))
    check((code, status) == ("RequestTooLargeException", 413), "a %s MB payload is 413 RequestTooLargeException" % mb)
code, status, _ = error_code(lam.invoke, FunctionName="sdk-size", InvocationType="Event", Payload=json.dumps({"data": "x" * (1024 * 1024 + 10)}))
check((code, status) == ("RequestTooLargeException", 413), "an async payload over 1 MB is refused")

# update code takes effect on the very next invoke
lam.create_function(FunctionName="sdk-update", Runtime="python3.12", Role="r", Handler="app.version_one", Code={"ZipFile": pkg})
check(json.loads(lam.invoke(FunctionName="sdk-update")["Payload"].read()) == {"version": 1}, "before update")
pkg2 = zip_of({"app.py": "def version_one(event, context):\n    return {'version': 2}\n"})
upd = lam.update_function_code(FunctionName="sdk-update", ZipFile=pkg2)
check(upd["CodeSha256"] == base64.b64encode(hashlib.sha256(pkg2).digest()).decode(), "update_function_code reports the new sha")
check(json.loads(lam.invoke(FunctionName="sdk-update")["Payload"].read()) == {"version": 2}, "update_function_code changes behaviour on the very next invoke")
lam.get_waiter("function_updated_v2").wait(FunctionName="sdk-update")

# update configuration: env changes on the next invoke; invalid values refused
before = lam.get_function_configuration(FunctionName="sdk-hello")["RevisionId"]
upd = lam.update_function_configuration(FunctionName="sdk-hello", Environment={"Variables": {"GREETING": "changed"}})
check(upd["RevisionId"] != before, "update bumps RevisionId")
check(json.loads(lam.invoke(FunctionName="sdk-hello")["Payload"].read())["env"] == "changed", "update_function_configuration applies on the next invoke")
check(error_code(lam.update_function_configuration, FunctionName="sdk-hello", Timeout=901)[1] == 400, "timeout 901 is refused")
check(lam.get_function_configuration(FunctionName="sdk-hello")["Timeout"] == 10, "a refused update changes nothing")
check(error_code(lam.update_function_configuration, FunctionName="sdk-hello", MemorySize=256, RevisionId="stale")[0] == "PreconditionFailedException", "a stale RevisionId is refused")

# asynchronous invocation policy through boto3
check(error_code(lam.get_function_event_invoke_config, FunctionName="sdk-hello")[0] == "ResourceNotFoundException", "no event invoke config yet")
ec = lam.put_function_event_invoke_config(FunctionName="sdk-hello", MaximumRetryAttempts=1, MaximumEventAgeInSeconds=120,
    DestinationConfig={"OnFailure": {"Destination": "nats:sdk.failures"}})
check(ec["MaximumRetryAttempts"] == 1 and ec["DestinationConfig"]["OnFailure"]["Destination"] == "nats:sdk.failures", "put_function_event_invoke_config")
got = lam.get_function_event_invoke_config(FunctionName="sdk-hello")
check(got["MaximumEventAgeInSeconds"] == 120 and hasattr(got["LastModified"], "year"), "get_function_event_invoke_config (LastModified parses as a timestamp)")
ec = lam.update_function_event_invoke_config(FunctionName="sdk-hello", MaximumRetryAttempts=0)
check(ec["MaximumRetryAttempts"] == 0 and ec["MaximumEventAgeInSeconds"] == 120, "update merges")
code, status, msg = error_code(lam.put_function_event_invoke_config, FunctionName="sdk-hello", DestinationConfig={"OnSuccess": {"Destination": "arn:aws:sqs:us-east-1:000000000000:q"}})
check(status == 400 and "arn:aws:sqs" in msg, "an unsupported destination is a 400 naming it")
lam.delete_function_event_invoke_config(FunctionName="sdk-hello")
check(error_code(lam.get_function_event_invoke_config, FunctionName="sdk-hello")[0] == "ResourceNotFoundException", "delete_function_event_invoke_config")

# function URLs through boto3
u = lam.create_function_url_config(FunctionName="sdk-hello", AuthType="NONE")
check(u["FunctionUrl"].endswith("/fn/sdk-hello/") and u["AuthType"] == "NONE", "create_function_url_config")
check(lam.get_function_url_config(FunctionName="sdk-hello")["FunctionUrl"] == u["FunctionUrl"], "get_function_url_config")
body = json.loads(urllib.request.urlopen(u["FunctionUrl"] + "?name=url").read())
check(body["greeting"] == "hello world", "the function URL serves the function")
lam.delete_function_url_config(FunctionName="sdk-hello")
check(error_code(lam.get_function_url_config, FunctionName="sdk-hello")[0] == "ResourceNotFoundException", "delete_function_url_config")

# Event invocation: 202
r = lam.invoke(FunctionName="sdk-hello", InvocationType="Event", Payload=b'{"name":"async"}')
check(r["StatusCode"] == 202, "Event invocation is accepted with 202")

# delete
lam.delete_function(FunctionName="sdk-fail")
check(error_code(lam.get_function, FunctionName="sdk-fail")[0] == "ResourceNotFoundException", "deleted function is gone")
check(error_code(lam.delete_function, FunctionName="sdk-fail")[0] == "ResourceNotFoundException", "deleting twice is ResourceNotFoundException")
print("boto3 suite passed")
