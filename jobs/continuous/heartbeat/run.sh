#!/usr/bin/env bash
# A continuous job in bash: a heartbeat on stdout, a warning on stderr now and then.
# Stops promptly on SIGTERM (bash runs the trap between commands).
trap 'echo "heartbeat: SIGTERM received, bye"; exit 0' TERM
n=0
while true; do
  n=$((n + 1))
  echo "heartbeat $n from $WEBJOBS_NAME (pid $$)"
  if (( n % 5 == 0 )); then
    echo "heartbeat $n: this line goes to stderr" >&2
  fi
  sleep 2 &
  wait $!
done
