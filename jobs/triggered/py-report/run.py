"""A scheduled triggered job in Python: every 5 minutes it writes a small
report into its data folder (WEBJOBS_DATA_PATH) and prints a summary."""
import datetime
import json
import os

data = os.environ["WEBJOBS_DATA_PATH"]
run_id = os.environ["WEBJOBS_RUN_ID"]
report = {
    "run": run_id,
    "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "load": os.getloadavg(),
}
path = os.path.join(data, "last_report.json")
with open(path, "w") as f:
    json.dump(report, f)
print(f"report {run_id}: load average {report['load'][0]:.2f}, written to {path}")
