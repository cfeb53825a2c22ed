"""An "agent" run by `secretproxy run`: it reports its environment, waits until the test has
read /proc/PID/environ from outside, then calls the API with the real OpenAI SDK configured by
that environment alone (OPENAI_BASE_URL, OPENAI_API_KEY), and exits with the code asked for.

Usage: agent.py REPORT_DIR EXIT_CODE
"""

import json
import os
import sys
import time

from openai import OpenAI

report_dir, exit_code = sys.argv[1], int(sys.argv[2])

with open(os.path.join(report_dir, "pid.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(report_dir, "pid.tmp"), os.path.join(report_dir, "pid"))

# The test reads /proc/PID/environ while this process runs, then creates `go`.
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(report_dir, "go")):
    if time.monotonic() > deadline:
        sys.exit("the test never said go")
    time.sleep(0.01)

client = OpenAI(max_retries=0, timeout=30)
reply = client.chat.completions.create(
    model="test-model", messages=[{"role": "user", "content": "say hello"}]
)
with open("/proc/self/environ", "rb") as f:
    environ = f.read().decode("utf-8", "replace")

with open(os.path.join(report_dir, "report.json"), "w") as f:
    json.dump(
        {
            "env": dict(os.environ),
            "environ": environ,
            "reply": reply.choices[0].message.content,
        },
        f,
    )
sys.exit(exit_code)
