# Added latency of ?min_position=<own append's last_position> on a caught-up
# projection: append then read at once, with and without min_position,
# interleaved, one keep-alive connection each.
import http.client, json, sys, time, statistics
host, port = sys.argv[1], int(sys.argv[2]); n = int(sys.argv[3])
c = http.client.HTTPConnection(host, port)
def req(method, path, body=None):
    h = {"content-type": "application/json"} if body is not None else {}
    t = time.perf_counter(); c.request(method, path, body=body, headers=h); r = c.getresponse(); data = r.read()
    return time.perf_counter() - t, r.status, data, r.getheader("eventfold-checkpoint")
plain, waited, stale = [], [], 0
body = json.dumps({"events": [{"type": "Ticked", "data": {}}]})
for i in range(n):
    _, s, d, _ = req("POST", "/streams/tick", body); p = json.loads(d)["last_position"]
    if i % 2:
        t, s, d, cp = req("GET", f"/plugins/counter/state/last?min_position={p}"); waited.append(t)
    else:
        t, s, d, cp = req("GET", "/plugins/counter/state/last"); plain.append(t)
        if cp is None: cp = json.loads(d)["error"]["checkpoint"]
        stale += int(cp) < p
q = lambda xs, f: sorted(xs)[int(len(xs) * f)] * 1e3
print(f"reads right after the append, {n//2} each: plain p50 {q(plain,.5):.3f} ms p99 {q(plain,.99):.3f} ms ({stale} of {len(plain)} older than the append); "
      f"min_position=own p50 {q(waited,.5):.3f} ms p99 {q(waited,.99):.3f} ms (0 older, by construction)")
# and min_position equal to the head when caught up (nothing to wait for):
time.sleep(0.5)
_, _, d, _ = req("GET", "/health"); head = json.loads(d)["head"]
a, b = [], []
for i in range(n):
    a.append(req("GET", "/plugins/counter/state/last")[0]); b.append(req("GET", f"/plugins/counter/state/last?min_position={head}")[0])
print(f"caught up, {n} each: plain p50 {q(a,.5):.3f} ms, min_position=head p50 {q(b,.5):.3f} ms (added {q(b,.5)-q(a,.5):+.3f} ms)")
