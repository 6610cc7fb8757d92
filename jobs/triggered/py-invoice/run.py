"""A queued triggered job in Python: it reads an order (the run's payload) on
stdin, reports its progress and leaves a result for whoever queued it."""
import json
import os
import sys

order = json.loads(sys.stdin.read() or "{}")
attempt = os.environ.get("WEBJOBS_ATTEMPT", "1")
with open(os.environ["WEBJOBS_PROGRESS_FILE"], "w") as f:
    f.write(f"50 pricing order {order.get('order')}\n")
lines = order.get("lines", [])
total = sum(line.get("price", 0) * line.get("quantity", 1) for line in lines)
with open(os.environ["WEBJOBS_RESULT_FILE"], "w") as f:
    json.dump({"order": order.get("order"), "total": total}, f)
with open(os.environ["WEBJOBS_PROGRESS_FILE"], "w") as f:
    f.write("100 done\n")
print(f"order {order.get('order')}: total {total} (attempt {attempt}, request {os.environ['WEBJOBS_REQUEST_ID']})")
