#!/usr/bin/env python3
"""How long a `coxswain server` takes to serve again after `kill -9` under writes.

Usage: scripts/store-restart.py PATH/TO/coxswain REQUESTS

Writes REQUESTS requests of 256 puts (`POST /v1/txns`, over 100,000 keys) to a fresh
one-member server on 127.0.0.1:7761, kills it with SIGKILL, starts it on the same data and
times how long until a linearizable get of the last key written answers. Used for the
figures in docs/benchmarks.md ("The state machine writes without the WAL")."""
import http.client, json, os, shutil, signal, subprocess, sys, tempfile, time
if len(sys.argv) != 3 or not sys.argv[2].isdigit() or not os.access(sys.argv[1], os.X_OK):
    raise SystemExit("usage: store-restart.py PATH/TO/coxswain REQUESTS (an executable and a count)")
binary, requests = sys.argv[1], int(sys.argv[2])
port = 7761
data = tempfile.mkdtemp()
def start():
    return subprocess.Popen([binary, "server", "--id", "1", "--data", data, "--listen", f"127.0.0.1:{port}",
                             "--token", "t"], stdout=subprocess.DEVNULL, stderr=open(data + ".log", "a"))
def call(path, body, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"authorization": "Bearer t", "content-type": "application/json"})
    r = c.getresponse(); out = r.read(); c.close()
    return r.status, out
def wait_ready(deadline, key=None):
    while time.time() < deadline:
        try:
            st, out = call("/v1/get", {"key": key or "/x"})
            if st == 200: return json.loads(out)
        except OSError: pass
        time.sleep(0.005)
    raise SystemExit(f"the server did not answer in time; its log is {data}.log")
p = start(); wait_ready(time.time() + 30)
value = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n", "namespace": "default"}, "data": {"v": "x" * 256}}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
t0 = time.time()
for r in range(requests):
    body = [{"success": [{"op": "put", "key": f"/bench/k{(r * 256 + i) % 100000}", "value": value}]} for i in range(256)]
    c.request("POST", "/v1/txns", json.dumps(body), {"authorization": "Bearer t", "content-type": "application/json"})
    resp = c.getresponse(); resp.read()
    assert resp.status == 200, resp.status
last_key = f"/bench/k{(requests * 256 - 1) % 100000}"
wrote = time.time() - t0
p.send_signal(signal.SIGKILL); p.wait()
t1 = time.time(); p = start()
kv = wait_ready(t1 + 120, last_key)
ready = time.time() - t1
print(f"{os.path.basename(os.path.dirname(binary))}: {requests*256} puts in {wrote:.1f} s; after kill -9, a get of the last key answered in {ready*1000:.0f} ms (revision {kv.get('revision')}, found {kv.get('kv') is not None})")
p.send_signal(signal.SIGKILL); p.wait(); shutil.rmtree(data, ignore_errors=True)
os.remove(data + ".log")
