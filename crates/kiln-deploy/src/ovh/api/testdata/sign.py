#!/usr/bin/env python3
"""Reference signatures from OVHcloud's official Python client (PyPI `ovh`).

Reads a JSON list of cases on stdin, each {endpoint, application_key,
application_secret, consumer_key, method, path, body (JSON value or null),
timestamp}, and prints the list with the headers the client's own
`raw_call` sets for each: the client's clock is pinned to `timestamp` and
its HTTP session replaced by one that records instead of sending, so the
signing code that runs is the client's, unchanged.

Regenerate the committed table with
  /opt/kiln-test/venv/bin/python3 sign.py < signature-cases.json > signatures.json
"""
import json
import sys
from unittest import mock

import ovh


class Recorder:
    def request(self, method, url, headers=None, data=None, timeout=None):
        self.seen = {"method": method, "url": url, "headers": dict(headers), "data": data}
        return None


def sign(case):
    client = ovh.Client(
        endpoint=case["endpoint"],
        application_key=case["application_key"],
        application_secret=case["application_secret"],
        consumer_key=case["consumer_key"],
    )
    client._time_delta = 0
    client._session = Recorder()
    with mock.patch("ovh.client.time.time", return_value=float(case["timestamp"])):
        client.raw_call(case["method"], case["path"], data=case["body"])
    seen = client._session.seen
    out = dict(case)
    out["url"] = seen["url"]
    out["sent_body"] = seen["data"]
    out["headers"] = {k: v for k, v in seen["headers"].items() if k.startswith("X-Ovh-")}
    return out


json.dump([sign(c) for c in json.load(sys.stdin)], sys.stdout, indent=2, ensure_ascii=False)
sys.stdout.write("\n")
