#!/bin/bash
# usage (from the repository): docs/perf/i17-js-strace.sh NAME SERVER-CMD...
# Counts the system calls of a load-test server over 500 bootstraps (two client processes,
# 250 each, C=5, 2 peers each) after 100 warm-up ones; the server must print its link first
# and stop when its stdin closes (interop/js/responder.mjs, python -m taleus_bootstrap.loadtest
# server). E.g. docs/perf/i17-js-strace.sh js node interop/js/responder.mjs
cd "$(git rev-parse --show-toplevel)"
out=${OUT:-$(mktemp -d)}
name=$1; shift
fifo=$out/$name.stdin; rm -f $fifo; mkfifo $fifo
"$@" < $fifo > $out/$name.srv.out 2>$out/$name.srv.err &
spid=$!
exec 7>$fifo
for i in $(seq 50); do [ -s $out/$name.srv.out ] && break; sleep 0.2; done
LINK=$(head -1 $out/$name.srv.out | python3 -c 'import json,sys;print(json.load(sys.stdin)["link"])')
.venv/bin/python -m taleus_bootstrap.loadtest client --link "$LINK" --sessions 100 --concurrency 10 --peers 4 > /dev/null
strace -f -c -p $spid -o $out/$name.strace 2>/dev/null &
tpid=$!
sleep 1
.venv/bin/python -m taleus_bootstrap.loadtest client --link "$LINK" --sessions 250 --concurrency 5 --peers 2 > $out/$name.c1 &
c1=$!
.venv/bin/python -m taleus_bootstrap.loadtest client --link "$LINK" --sessions 250 --concurrency 5 --peers 2 > $out/$name.c2 &
c2=$!
wait $c1 $c2
for c in c1 c2; do tail -1 $out/$name.$c | python3 -c 'import json,sys;print(json.load(sys.stdin)["outcomes"])'; done
kill -INT $tpid; wait $tpid
exec 7>&-
wait $spid
tail -1 $out/$name.srv.out
head -25 $out/$name.strace; tail -2 $out/$name.strace
