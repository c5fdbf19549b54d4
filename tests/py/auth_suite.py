"""The locked front door through unmodified boto3: python auth_suite.py ENDPOINT FUNCTION.
The right key (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) works, also with an ARN in
the path; an unsigned client, a wrong secret and an unknown key get 403 with the
error codes botocore expects. Exits non-zero on the first failed check."""
import os
import sys

import boto3
import botocore
import botocore.config
from botocore.exceptions import ClientError

endpoint, function = sys.argv[1], sys.argv[2]


def client(key_id, secret, **config):
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}, **config),
    )


key_id, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
good = client(key_id, secret)
names = [f["FunctionName"] for f in good.list_functions()["Functions"]]
assert function in names, names
arn = "arn:aws:lambda:us-east-1:000000000000:function:" + function
got = good.get_function(FunctionName=arn)
assert got["Configuration"]["FunctionName"] == function, got
out = good.invoke(FunctionName=function, Payload=b'{"name": "signed"}')
assert out["StatusCode"] == 200 and b"hello signed" in out["Payload"].read(), out


def refused(c, code):
    try:
        c.list_functions()
    except ClientError as e:
        err = e.response["Error"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status == 403 and err["Code"] == code, (status, err)
        return
    raise AssertionError("expected %s, the call succeeded" % code)


refused(client(key_id, secret, signature_version=botocore.UNSIGNED), "MissingAuthenticationTokenException")
refused(client(key_id, secret + "x"), "InvalidSignatureException")
refused(client("AKIDUNKNOWN000000000", secret), "UnrecognizedClientException")
try:
    client(key_id, "wrong").invoke(FunctionName=function, Payload=b"{}")
    raise AssertionError("an invoke with a wrong secret succeeded")
except ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidSignatureException", e.response
print("auth suite passed")
