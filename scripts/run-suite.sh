#!/usr/bin/env bash
# The linters and the suite in an environment already set up (scripts/test.sh does that from
# the lock, scripts/test-latest.sh from the newest releases).
#   bash scripts/run-suite.sh VENV [extra pytest args]
# The CPU-bound part runs three workers on two cores (some of its tests wait on subprocesses
# and servers: 175 s against 200 s with two). The tests marked `serial` need wall time:
# they run after the CPU-bound part, four at a time (they mostly wait on real time: 116 s
# against 151 s three at a time; they passed so beside a busy loop); those marked `alone`
# (the fault matrix, itself six benches at once) run last, by themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$1"; shift
PY="$VENV/bin/python"
export PATH="$PWD/$VENV/bin:$PATH"   # tests start `testbed` as a subprocess

"$PY" -m ruff check .
"$PY" -m mypy
# exit 5 is "no test selected": extra arguments (-k ...) may leave one group empty
"$PY" -m pytest -n 3 -q -p no:cacheprovider -m "not serial and not alone" "$@" || [ $? -eq 5 ]
# The wall-time groups run at a raised scheduling priority, as a bench controller should on
# a shared machine: a CPU-bound neighbour then slows them no more than it slows the bench's
# own work (where raising it is not permitted, nice says so and runs them as they are). And
# they run one suite at a time on a machine: two suites side by side (two checkouts, a
# developer's run beside CI) take turns through a lock in the temporary folder, since two
# sets of real-time benches at once (twelve on two cores) drove healthy rigs off target.
# The lock is held by this shell alone (fd 9, closed for the tests), released when it ends.
RT=(nice -n "${TESTBED_RT_NICE:--10}")
LOCK="${TMPDIR:-/tmp}/testbed-wall-time-tests.lock"
exec 9>>"$LOCK"
if ! flock -n 9; then
  echo "waiting for another suite's wall-time tests to end ($LOCK)"
  flock 9
fi
"${RT[@]}" "$PY" -m pytest -n 4 -q -p no:cacheprovider -m "serial and not alone" "$@" 9>&- \
  || [ $? -eq 5 ]
"${RT[@]}" "$PY" -m pytest -q -p no:cacheprovider -m alone "$@" 9>&- || [ $? -eq 5 ]
flock -u 9
