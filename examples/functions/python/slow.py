#!/usr/bin/env python3
"""nanofaas example (local dispatcher): sleeps for `input` seconds, then answers.

With a timeoutMs shorter than the sleep, the invocation ends with 504 at the deadline and the
process is killed.
"""
import json
import sys
import time

seconds = float(json.load(sys.stdin)["input"])
time.sleep(seconds)
json.dump({"slept": seconds}, sys.stdout)
