"""A continuous job in Python that stops gracefully.

It finishes the item in hand and exits 0 as soon as WEBJOBS_SHUTDOWN_FILE
appears or SIGTERM arrives (the daemon does both when it stops the job).
"""
import os
import signal
import sys
import threading

wake = threading.Event()


def on_sigterm(signum, frame):
    wake.set()


signal.signal(signal.SIGTERM, on_sigterm)
shutdown_file = os.environ.get("WEBJOBS_SHUTDOWN_FILE", "")
processed = 0


def shutdown_requested():
    return bool(shutdown_file) and os.path.exists(shutdown_file)


print(f"worker started in {os.getcwd()}", flush=True)
while not wake.is_set() and not shutdown_requested():
    processed += 1
    print(f"processed item {processed}", flush=True)
    if processed % 10 == 0:
        print(f"queue is slow at item {processed}", file=sys.stderr, flush=True)
    wake.wait(1)

reason = "shutdown file" if shutdown_requested() else "SIGTERM"
print(f"worker stopping ({reason}) after {processed} items", flush=True)
sys.exit(0)
