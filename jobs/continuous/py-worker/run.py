"""A continuous job in Python that stops gracefully.

It finishes the item in hand and exits 0 when WEBJOBS_SHUTDOWN_FILE appears
or when SIGTERM arrives, whichever comes first.
"""
import os
import signal
import sys
import time

stopping = False


def on_sigterm(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_sigterm)
shutdown_file = os.environ.get("WEBJOBS_SHUTDOWN_FILE", "")
processed = 0

print(f"worker started in {os.getcwd()}", flush=True)
while not stopping and not (shutdown_file and os.path.exists(shutdown_file)):
    processed += 1
    print(f"processed item {processed}", flush=True)
    if processed % 10 == 0:
        print(f"queue is slow at item {processed}", file=sys.stderr, flush=True)
    time.sleep(1)

reason = "SIGTERM" if stopping else "shutdown file"
print(f"worker stopping ({reason}) after {processed} items", flush=True)
sys.exit(0)
