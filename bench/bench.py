#!/usr/bin/env python3
"""The side-by-side proxy benchmark (issue 5). Started by bench/run, which installs the tools
and builds restatus; see docs/performance.md.

Layout: the proxy under test (restatus, NGINX or HAProxy, one worker/thread each) is pinned to
CPU 0; the upstream (NGINX), the upload sink and the load generator are pinned to CPU 1. All
three proxies run side by side for the whole benchmark, only one is loaded at a time, and each
scenario runs in rounds whose proxy order rotates, so that the three see the same conditions
(the machine may be busy with other work). Every figure is the median over the rounds.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
LOAD_CPU = "1"
PROXIES = ["restatus", "nginx", "haproxy"]
SCENARIOS = ["1", "2", "3", "4", "5", "6"]

SCENARIO_TITLES = {
    "1": "1 GET pass-through, small body, 64 conns",
    "2": "2 POST 200->201 (header rewrite), 64 conns",
    "2r": "2r the same POST, no rule (restatus only: reference for 2)",
    "3": "3 body rule: 1 KiB JSON 200->404, 64 conns",
    "4d": "4 download 1 GiB (streaming)",
    "4u": "4 upload 1 GiB (streaming)",
    "5": "5 idle keep-alive connections",
    "6": "6 HTTP/2 (h2c) clients, 64 conns x 10 streams",
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc readings


def read_stat(pid):
    """(utime, stime) in clock ticks for the whole thread group of pid."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]), int(fields[12])


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def tree_ticks(pid):
    """(utime, stime) in clock ticks of pid and its descendants."""
    user = system = 0
    for p in tree(pid):
        try:
            u, s = read_stat(p)
            user += u
            system += s
        except OSError:
            pass
    return user, system


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_kib(pid, key):
    total = 0
    for p in tree(pid):
        try:
            total += status_kib(p, key)
        except OSError:
            pass
    return total


def reset_hwm(pid):
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def cpu_line(cpu):
    """(busy ticks excluding irq/softirq, irq+softirq ticks, total ticks) of one CPU."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                return user + nice + system + steal, irq + softirq, sum(v[:8])
    return 0, 0, 0


class Meter:
    """CPU of the proxy tree, and of everything else on the proxy's CPU, over one run."""

    def __init__(self, pid):
        self.pid = pid

    def __enter__(self):
        self.t0 = time.monotonic()
        self.user0, self.sys0 = tree_ticks(self.pid)
        self.cpu0 = cpu_line(PROXY_CPU)
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.t0
        user, system = tree_ticks(self.pid)
        self.user_ticks = user - self.user0
        self.sys_ticks = system - self.sys0
        self.ticks = self.user_ticks + self.sys_ticks
        busy1, irq1, total1 = cpu_line(PROXY_CPU)
        busy0, irq0, total0 = self.cpu0
        span = max(total1 - total0, 1)
        # time on the proxy's CPU spent by other processes (another build, say)
        self.other_pct = 100.0 * max(busy1 - busy0 - self.ticks, 0) / span
        self.softirq_pct = 100.0 * (irq1 - irq0) / span
        self.proxy_pct = 100.0 * self.ticks / span
        return False

    @property
    def cpu_us(self):
        return self.ticks * 1e6 / CLK_TCK

    @property
    def user_us(self):
        return self.user_ticks * 1e6 / CLK_TCK

    @property
    def sys_us(self):
        return self.sys_ticks * 1e6 / CLK_TCK


# ---------------------------------------------------------------------------------------------
# processes


def pinned(cpu, argv):
    return ["taskset", "-c", cpu] + argv


def check_port_free(port, what):
    """Refuses to start when something already listens on `port`: the readiness check would
    otherwise take that process for ours, and the run would measure it."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        raise SystemExit(f"port {port} for {what} is in use (a server left from an earlier run?); stop it or set BENCH_PORT_BASE")
    finally:
        probe.close()


def wait_port(port, proc, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; see its log in the work dir")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout}s")


class Procs:
    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []
        self.specs = {}

    def start(self, name, argv, cpu, port, env=None):
        check_port_free(port, name)
        out = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        proc = subprocess.Popen(
            pinned(cpu, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        self.specs[name] = (argv, cpu, port, env)
        wait_port(port, proc, name)
        return proc

    def restart(self, name):
        """Stops the process started as `name` and starts it again; returns the new one."""
        for i, (n, proc) in enumerate(self.procs):
            if n == name:
                argv, cpu, port, env = self.specs[name]
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                del self.procs[i]
                # the listener may linger a moment after exit
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                            time.sleep(0.05)
                    except OSError:
                        break
                return self.start(name, argv, cpu, port, env)
        raise KeyError(name)

    def stop(self):
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def fill(template, values):
    with open(os.path.join(BENCH, "configs", template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_0-9]+@", text)
    if left:
        raise SystemExit(f"{template}: unfilled placeholders {sorted(set(left))}")
    return text


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def missing_body():
    """The 1 KiB legacy "not found" body: 200 with an error object, padded to 1024 bytes."""
    body = {
        "error": {"code": "NOT_FOUND", "message": "item 42 does not exist"},
        "request": {"path": "/missing"},
        "padding": "",
    }
    text = json.dumps(body, separators=(",", ":"))
    body["padding"] = "x" * (1024 - len(text))
    return json.dumps(body, separators=(",", ":"))


def lua_available():
    return os.path.exists("/usr/lib/nginx/modules/ngx_http_lua_module.so") and os.path.exists(
        "/usr/lib/nginx/modules/ndk_http_module.so"
    )


# ---------------------------------------------------------------------------------------------
# load generators


def parse_duration(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)?", text.strip())
    if not m:
        raise ValueError(text)
    n = float(m.group(1))
    return n * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def wrk_latency_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    n = float(m.group(1))
    return n * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[m.group(2)]


def run_wrk(port, path, seconds, script=None, connections=64):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s", "--latency", "--timeout", "5s"]
    if script:
        argv += ["-s", script]
    argv.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True).stdout
    res = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    res["requests"] = int(m.group(1))
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[key] = wrk_latency_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return res


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def run_h2load(port, path, seconds, logfile, connections=64, streams=10):
    argv = [
        "h2load",
        "-t1",
        f"-c{connections}",
        f"-m{streams}",
        f"-D{int(round(seconds))}",
        f"--log-file={logfile}",
        f"http://127.0.0.1:{port}{path}",
    ]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True).stdout
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
    if not m:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    res = {"rps": float(m.group(3))}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    res["requests"] = int(m.group(3))
    res["failed"] = int(m.group(5))
    m = re.search(r"status codes: (\d+) 2xx", out)
    res["non2xx"] = res["requests"] - (int(m.group(1)) if m else 0)
    lat = []
    with open(logfile) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] != "-1":
                lat.append(int(parts[2]))
    os.unlink(logfile)
    lat.sort()
    res["p50_ms"] = percentile(lat, 50) / 1000.0 if lat else None
    res["p99_ms"] = percentile(lat, 99) / 1000.0 if lat else None
    return res


def curl_status(url, *extra):
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *extra, url],
        capture_output=True,
        text=True,
    ).stdout
    return out.strip()


def curl_transfer(argv):
    out = subprocess.run(
        pinned(LOAD_CPU, ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}"] + argv),
        capture_output=True,
        text=True,
    )
    code, down, up, total = out.stdout.split()
    return code, int(down), int(up), float(total)


def count_lines_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            n = 0
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    return n
                n += chunk.count(b"\n")
    except OSError:
        return 0


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="restatus-bench.")
        self.procs = Procs(self.workdir)
        base = args.port_base
        self.ports = {
            "UPSTREAM_PORT": base + 1,
            "SINK_PORT": base + 2,
            "RESTATUS_PORT": base + 10,
            "NGINX_PORT": base + 11,
            "HAPROXY_PORT": base + 12,
            "NGINX_H2_PORT": base + 21,
            "HAPROXY_H2_PORT": base + 22,
        }
        self.h1 = {
            "restatus": self.ports["RESTATUS_PORT"],
            "nginx": self.ports["NGINX_PORT"],
            "haproxy": self.ports["HAPROXY_PORT"],
        }
        # restatus serves both protocols on one listener
        self.h2 = {
            "restatus": self.ports["RESTATUS_PORT"],
            "nginx": self.ports["NGINX_H2_PORT"],
            "haproxy": self.ports["HAPROXY_H2_PORT"],
        }
        self.pids = {}
        self.runs = []
        self.checks = {}
        self.notes = []
        self.big = os.path.join(self.workdir, "www", "big.bin")
        self.deviations = os.path.join(self.workdir, "restatus-deviations.jsonl")

    # -- setup ------------------------------------------------------------------------------

    def setup(self):
        a = self.args
        # NGINX workers run as an unprivileged user: they must be able to read the files
        os.chmod(self.workdir, 0o755)
        os.makedirs(os.path.join(self.workdir, "www"), mode=0o755)
        subprocess.run(["fallocate", "-l", str(a.big_bytes), self.big], check=True)
        os.chmod(self.big, 0o644)
        # read it once so that the page cache holds it (fallocated blocks read as zeros)
        with open(self.big, "rb") as f:
            while f.read(1 << 24):
                pass
        values = dict(self.ports)
        values["DIR"] = self.workdir
        values["MISSING_BODY"] = missing_body()
        nofile = a.nofile
        values["NOFILE"] = nofile
        values["HAPROXY_MAXCONN"] = a.idle_conns + 2000
        lua = lua_available()
        values["LUA_LOAD"] = (
            "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
            "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
            if lua
            else ""
        )
        with open(os.path.join(BENCH, "configs", "proxy-nginx-lua.conf")) as f:
            values["LUA_LOCATIONS"] = f.read() if lua else ""
        self.nginx_lua = lua
        if not lua:
            self.notes.append("NGINX Lua module missing: scenarios 2 and 3 are n/a for NGINX")

        upstream = write(os.path.join(self.workdir, "upstream-nginx.conf"), fill("upstream-nginx.conf", values))
        proxy_nginx = write(os.path.join(self.workdir, "proxy-nginx.conf"), fill("proxy-nginx.conf", values))
        haproxy = write(os.path.join(self.workdir, "haproxy.cfg"), fill("haproxy.cfg", values))
        restatus_cfg = write(os.path.join(self.workdir, "restatus.toml"), fill("restatus.toml", values))

        check = subprocess.run([a.restatus, "check", "--config", restatus_cfg], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"restatus check failed:\n{check.stdout}{check.stderr}")
        for argv in (
            ["nginx", "-t", "-q", "-e", os.path.join(self.workdir, "nginx-t.log"), "-c", upstream],
            ["nginx", "-t", "-q", "-e", os.path.join(self.workdir, "nginx-t.log"), "-c", proxy_nginx],
            ["haproxy", "-c", "-q", "-f", haproxy],
        ):
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed:\n{r.stdout}{r.stderr}")

        p = self.ports
        self.procs.start("upstream-nginx", ["nginx", "-e", os.path.join(self.workdir, "upstream-nginx.error.log"), "-c", upstream], LOAD_CPU, p["UPSTREAM_PORT"])
        self.procs.start("upload-sink", [sys.executable, os.path.join(BENCH, "upload_sink.py"), str(p["SINK_PORT"])], LOAD_CPU, p["SINK_PORT"])
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        self.pids["restatus"] = self.procs.start("restatus", [a.restatus, "run", "--config", restatus_cfg], PROXY_CPU, p["RESTATUS_PORT"], env=env).pid
        self.pids["nginx"] = self.procs.start("proxy-nginx", ["nginx", "-e", os.path.join(self.workdir, "proxy-nginx.error.log"), "-c", proxy_nginx], PROXY_CPU, p["NGINX_PORT"]).pid
        self.pids["haproxy"] = self.procs.start("haproxy", ["haproxy", "-db", "-f", haproxy], PROXY_CPU, p["HAPROXY_PORT"]).pid
        for name in ("nginx", "haproxy"):
            wait_port(self.h2[name], None, name)
        self.sanity()

    def sanity(self):
        """What each proxy answers for each scenario's request, checked before measuring."""
        want = {
            "GET /ok": "200",
            "POST /create": "201",
            "GET /missing": "404",
            "h2 GET /ok": "200",
        }
        for proxy in PROXIES:
            got = {}
            base = f"http://127.0.0.1:{self.h1[proxy]}"
            got["GET /ok"] = curl_status(base + "/ok")
            got["POST /create"] = curl_status(base + "/create", "-X", "POST", "-H", "content-type: application/json", "--data-binary", '{"name":"widget"}')
            got["GET /missing"] = curl_status(base + "/missing")
            got["h2 GET /ok"] = curl_status(f"http://127.0.0.1:{self.h2[proxy]}/ok", "--http2-prior-knowledge")
            self.checks[proxy] = {k: (v, v == want[k]) for k, v in got.items()}
            bad = {k: v for k, v in got.items() if v != want[k]}
            if bad:
                log(f"  sanity {proxy}: unexpected statuses {bad} (expected {want})")
            else:
                log(f"  sanity {proxy}: ok {got}")

    def shutdown(self):
        self.procs.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {self.workdir}")

    # -- scenarios --------------------------------------------------------------------------

    def applicable(self, scenario, proxy):
        if proxy == "nginx" and scenario in ("2", "3") and not self.nginx_lua:
            return False
        return scenario != "2r" or proxy == "restatus"

    def record(self, scenario, proxy, rnd, **fields):
        entry = {"scenario": scenario, "proxy": proxy, "round": rnd, **fields}
        self.runs.append(entry)
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
        log(f"  [{scenario}] round {rnd} {proxy:8} {shown}")

    def start_perf(self, scenario, proxy, rnd):
        """With BENCH_PERF=1: `perf record -g` of restatus during its measured runs (the
        figures of such a run are perturbed by perf; use it for the profile only)."""
        if not self.args.perf or proxy != "restatus":
            return None
        os.makedirs(self.args.out, exist_ok=True)
        data = os.path.join(self.args.out, f"perf-s{scenario}-r{rnd}.data")
        proc = subprocess.Popen(
            pinned(LOAD_CPU, ["perf", "record", "-q", "-F", "1999", "-g", "-p", str(self.pids[proxy]), "-o", data]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        return proc

    def stop_perf(self, proc):
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)

    def rate_scenario(self, scenario, proxy, rnd):
        a = self.args
        pid = self.pids[proxy]
        if scenario == "6":
            port = self.h2[proxy]
            logfile = os.path.join(self.workdir, "h2load.log")
            run_h2load(port, "/ok", max(1, a.warmup), logfile)
            perf = self.start_perf(scenario, proxy, rnd)
            with Meter(pid) as m:
                res = run_h2load(port, "/ok", a.duration, logfile)
            self.stop_perf(perf)
        else:
            port = self.h1[proxy]
            path, script = {
                "1": ("/ok", None),
                "2": ("/create", os.path.join(BENCH, "post.lua")),
                "2r": ("/plain/create", os.path.join(BENCH, "post.lua")),
                "3": ("/missing", None),
            }[scenario]
            if a.warmup > 0:
                run_wrk(port, path, a.warmup, script)
            before = file_size(self.deviations)
            perf = self.start_perf(scenario, proxy, rnd)
            with Meter(pid) as m:
                res = run_wrk(port, path, a.duration, script)
            self.stop_perf(perf)
            if proxy == "restatus" and scenario in ("2", "2r", "3"):
                time.sleep(0.3)
                res["records"] = count_lines_from(self.deviations, before)
        res["cpu_us_per_req"] = m.cpu_us / max(res["requests"], 1)
        res["user_us_per_req"] = m.user_us / max(res["requests"], 1)
        res["sys_us_per_req"] = m.sys_us / max(res["requests"], 1)
        res["proxy_cpu_pct"] = m.proxy_pct
        res["other_on_cpu0_pct"] = m.other_pct
        res["softirq_cpu0_pct"] = m.softirq_pct
        self.record(scenario, proxy, rnd, **res)

    def fresh(self, proxy):
        """Restarts a proxy, so that a memory figure is not inflated by an earlier scenario
        (freed heap is not necessarily given back to the system)."""
        name = {"restatus": "restatus", "nginx": "proxy-nginx", "haproxy": "haproxy"}[proxy]
        self.pids[proxy] = self.procs.restart(name).pid
        if proxy != "restatus":
            wait_port(self.h2[proxy], None, proxy)

    def streaming(self, proxy, rnd):
        pid = self.pids[proxy] if proxy != "direct" else None
        port = self.h1[proxy] if proxy != "direct" else None
        results = {}
        for direction in ("4d", "4u"):
            if proxy == "direct":
                url = (
                    f"http://127.0.0.1:{self.ports['UPSTREAM_PORT']}/big"
                    if direction == "4d"
                    else f"http://127.0.0.1:{self.ports['SINK_PORT']}/upload"
                )
            else:
                url = f"http://127.0.0.1:{port}/big" if direction == "4d" else f"http://127.0.0.1:{port}/upload"
            argv = [url] if direction == "4d" else ["-X", "POST", "-H", "Expect:", "-H", "content-type: application/octet-stream", "-T", self.big, url]
            if pid:
                reset_hwm(pid)
                rss_before = tree_kib(pid, "VmRSS")
                with Meter(pid) as m:
                    code, down, up, total = curl_transfer(argv)
                hwm = tree_kib(pid, "VmHWM")
            else:
                code, down, up, total = curl_transfer(argv)
            moved = down if direction == "4d" else up
            res = {
                "status": code,
                "bytes": moved,
                "gbps": moved / total / 1e9,
                "seconds": total,
            }
            if moved != self.args.big_bytes:
                res["short"] = True
            if pid:
                res["peak_rss_mib"] = hwm / 1024.0
                res["rss_before_mib"] = rss_before / 1024.0
                res["cpu_s_per_gib"] = m.cpu_us / 1e6 / (moved / 2**30) if moved else None
                res["other_on_cpu0_pct"] = m.other_pct
            self.record(direction, proxy, rnd, **res)
            results[direction] = res
        return results

    def idle(self, proxy, rnd):
        pid = self.pids[proxy]
        n = self.args.idle_conns
        rss_before = tree_kib(pid, "VmRSS")
        client = subprocess.Popen(
            pinned(LOAD_CPU, [sys.executable, os.path.join(BENCH, "idle_clients.py"), "127.0.0.1", str(self.h1[proxy]), str(n)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = client.stdout.readline().split()
        opened = int(line[1]) if len(line) >= 3 and line[0] == "ready" else 0
        failed = int(line[2]) if len(line) >= 3 and line[0] == "ready" else n
        time.sleep(2.0)
        established = count_established(self.h1[proxy])
        rss = tree_kib(pid, "VmRSS")
        hwm = tree_kib(pid, "VmHWM")
        client.stdin.close()
        client.wait(timeout=60)
        time.sleep(1.0)
        rss_after = tree_kib(pid, "VmRSS")
        self.record(
            "5",
            proxy,
            rnd,
            opened=opened,
            failed=failed,
            established=established,
            rss_mib=rss / 1024.0,
            rss_before_mib=rss_before / 1024.0,
            kib_per_conn=(rss - rss_before) / max(opened, 1),
            hwm_mib=hwm / 1024.0,
            rss_after_close_mib=rss_after / 1024.0,
        )

    def run(self):
        a = self.args
        proxies = [p for p in PROXIES if p in a.proxies]
        for rnd in range(1, a.rounds + 1):
            shift = (rnd - 1) % len(proxies)
            order = proxies[shift:] + proxies[:shift]
            log(f"== round {rnd}/{a.rounds}: order {', '.join(order)}")
            for scenario in ("1", "2", "2r", "3", "6"):
                if scenario[0] not in a.scenarios:
                    continue
                for proxy in order:
                    if self.applicable(scenario, proxy):
                        self.rate_scenario(scenario, proxy, rnd)
            # memory scenarios: each on a freshly started proxy
            if "4" in a.scenarios:
                if rnd == 1:
                    self.streaming("direct", rnd)
                for proxy in order:
                    self.fresh(proxy)
                    self.streaming(proxy, rnd)
            if "5" in a.scenarios:
                for proxy in order:
                    self.fresh(proxy)
                    self.idle(proxy, rnd)
            if ("4" in a.scenarios or "5" in a.scenarios) and rnd < a.rounds:
                for proxy in order:
                    self.fresh(proxy)


def count_established(port):
    """Established TCP connections whose local port is `port` (the proxy's side)."""
    n = 0
    hexport = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(":" + hexport) and parts[3] == "01":
                        n += 1
        except OSError:
            pass
    return n


# ---------------------------------------------------------------------------------------------
# report


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    """{(scenario, proxy): {metric: median}}"""
    groups = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["proxy"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        metrics = {}
        for k in rs[0]:
            if k in ("scenario", "proxy", "round"):
                continue
            vals = [r.get(k) for r in rs]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals if v is not None):
                metrics[k] = median(vals)
        metrics["rounds"] = len(rs)
        out[key] = metrics
    return out


ROWS = [
    ("1", [("rps", "req/s", "{:.0f}", "high"), ("p50_ms", "p50 ms", "{:.2f}", "low"), ("p99_ms", "p99 ms", "{:.2f}", "low"), ("cpu_us_per_req", "CPU µs/req", "{:.1f}", "low"), ("user_us_per_req", "  of it user", "{:.1f}", "low"), ("sys_us_per_req", "  of it kernel", "{:.1f}", "low")]),
    ("2", [("rps", "req/s", "{:.0f}", "high"), ("p50_ms", "p50 ms", "{:.2f}", "low"), ("p99_ms", "p99 ms", "{:.2f}", "low"), ("cpu_us_per_req", "CPU µs/req", "{:.1f}", "low"), ("user_us_per_req", "  of it user", "{:.1f}", "low"), ("sys_us_per_req", "  of it kernel", "{:.1f}", "low")]),
    ("2r", [("rps", "req/s", "{:.0f}", "high"), ("cpu_us_per_req", "CPU µs/req", "{:.1f}", "low"), ("user_us_per_req", "  of it user", "{:.1f}", "low"), ("sys_us_per_req", "  of it kernel", "{:.1f}", "low")]),
    ("3", [("rps", "req/s", "{:.0f}", "high"), ("p50_ms", "p50 ms", "{:.2f}", "low"), ("p99_ms", "p99 ms", "{:.2f}", "low"), ("cpu_us_per_req", "CPU µs/req", "{:.1f}", "low"), ("user_us_per_req", "  of it user", "{:.1f}", "low"), ("sys_us_per_req", "  of it kernel", "{:.1f}", "low")]),
    ("4d", [("gbps", "GB/s", "{:.2f}", "high"), ("peak_rss_mib", "peak RSS MiB", "{:.1f}", "low"), ("cpu_s_per_gib", "CPU s/GiB", "{:.3f}", "low")]),
    ("4u", [("gbps", "GB/s", "{:.2f}", "high"), ("peak_rss_mib", "peak RSS MiB", "{:.1f}", "low"), ("cpu_s_per_gib", "CPU s/GiB", "{:.3f}", "low")]),
    ("5", [("rss_mib", "RSS MiB, conns open", "{:.1f}", "low"), ("rss_before_mib", "RSS MiB before", "{:.1f}", "low"), ("kib_per_conn", "KiB per conn", "{:.2f}", "low")]),
    ("6", [("rps", "req/s", "{:.0f}", "high"), ("p50_ms", "p50 ms", "{:.2f}", "low"), ("p99_ms", "p99 ms", "{:.2f}", "low"), ("cpu_us_per_req", "CPU µs/req", "{:.1f}", "low"), ("user_us_per_req", "  of it user", "{:.1f}", "low"), ("sys_us_per_req", "  of it kernel", "{:.1f}", "low")]),
]


def table(summary, args, markdown=False):
    head = ["scenario", "metric", "restatus", "nginx", "haproxy", "restatus/nginx", "restatus/haproxy"]
    rows = []
    for scenario, metrics in ROWS:
        if scenario[0] not in args.scenarios:
            continue
        title = SCENARIO_TITLES[scenario]
        if scenario == "5":
            title = f"5 {args.idle_conns:,} idle keep-alive conns"
        first = True
        for key, label, fmt, _ in metrics:
            cells = []
            vals = {}
            for proxy in PROXIES:
                v = summary.get((scenario, proxy), {}).get(key)
                vals[proxy] = v
                cells.append(fmt.format(v) if v is not None else "n/a")
            ratios = []
            for other in ("nginx", "haproxy"):
                r, o = vals["restatus"], vals[other]
                ratios.append(f"{r / o:.2f}" if r is not None and o not in (None, 0) else "n/a")
            rows.append([title if first else "", label] + cells + ratios)
            first = False
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt_row = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt_row(head), fmt_row(["-" * w for w in widths])]
    lines += [fmt_row(r) for r in rows]
    return "\n".join(lines)


def paired(runs, scenario, key="cpu_us_per_req", proxy="restatus"):
    """`proxy`'s `scenario` over its scenario 1 of the same round, one ratio per round.

    A round runs both within a minute, so a drift of the machine's speed between rounds
    (large on a shared virtual machine) moves both; the median of these ratios is steadier
    than the ratio of the two medians."""
    by_round = {}
    for r in runs:
        if r["proxy"] == proxy and r["scenario"] in (scenario, "1") and r.get(key):
            by_round.setdefault(r["round"], {})[r["scenario"]] = r[key]
    return [v[scenario] / v["1"] for v in by_round.values() if len(v) == 2]


def targets(summary, args, runs=()):
    """The issue's targets, met or not, from the medians."""
    out = []

    def get(s, p, k):
        return summary.get((s, p), {}).get(k)

    if "1" in args.scenarios:
        for key, label, better in (("cpu_us_per_req", "CPU/req", "low"), ("rps", "req/s", "high"), ("p99_ms", "p99", "low")):
            r = get("1", "restatus", key)
            for other in ("nginx", "haproxy"):
                o = get("1", other, key)
                if r is None or o is None:
                    continue
                ok = r <= o if better == "low" else r >= o
                out.append(f"1: {label} restatus {r:.4g} vs {other} {o:.4g}: {'met' if ok else 'NOT met'} ({(r / o - 1) * 100:+.1f}%)")
    for s, limit in (("2", 5), ("3", 30)):
        if s in args.scenarios and "1" in args.scenarios:
            for key, label in (("rps", "req/s"), ("cpu_us_per_req", "CPU/req")):
                a, b = get(s, "restatus", key), get("1", "restatus", key)
                if a is None or b is None:
                    continue
                gap = (a / b - 1) * 100
                worse = -gap if key == "rps" else gap
                out.append(f"{s}: restatus {label} {a:.4g} vs scenario 1 {b:.4g} ({gap:+.1f}%): {'met' if worse <= limit else 'NOT met'} (within {limit}%)")
            ratios = paired(runs, s)
            if len(ratios) > 1:
                gaps = sorted((r - 1) * 100 for r in ratios)
                out.append(f"{s}: CPU/req over scenario 1 round by round: median {median(gaps):+.1f}% (rounds {', '.join(f'{g:+.1f}' for g in gaps)})")
            # The same work done by the other proxies, over their own scenario 1: how much of
            # the gap is the request itself (a POST with a body, a 1 KiB response) rather
            # than what restatus does with it.
            for other in ("nginx", "haproxy"):
                ratios = paired(runs, s, proxy=other)
                if ratios:
                    gap = (median(ratios) - 1) * 100
                    out.append(f"{s}: for reference, {other}'s CPU/req over its own scenario 1: median {gap:+.1f}% round by round")
    if "2" in args.scenarios:
        a, b = get("2", "restatus", "cpu_us_per_req"), get("2r", "restatus", "cpu_us_per_req")
        if a is not None and b is not None:
            out.append(f"2: for reference, the rewrite and its record cost {(a / b - 1) * 100:+.1f}% CPU/req over the same POST passed through ({a:.4g} vs {b:.4g})")
    if "4" in args.scenarios:
        for s, name in (("4d", "download"), ("4u", "upload")):
            g, rss = get(s, "restatus", "gbps"), get(s, "restatus", "peak_rss_mib")
            if g is not None:
                out.append(f"4: {name} {g:.2f} GB/s: {'met' if g >= 1.0 else 'NOT met'} (>= 1 GB/s); peak RSS {rss:.1f} MiB: {'met' if rss <= 64 else 'NOT met'} (<= 64 MiB)")
    if "5" in args.scenarios:
        rss = get("5", "restatus", "rss_mib")
        if rss is not None:
            out.append(f"5: RSS with {args.idle_conns:,} idle conns {rss:.1f} MiB: {'met' if rss <= 150 else 'NOT met'} (<= 150 MiB)")
    return out


def machine():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpus"] = os.cpu_count()
    info["kernel"] = os.uname().release
    with open("/proc/meminfo") as f:
        info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)

    def version(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    info["nginx"] = version(["nginx", "-v"])
    info["haproxy"] = version(["haproxy", "-v"])
    info["wrk"] = version(["wrk", "--version"])
    info["h2load"] = version(["h2load", "--version"])
    info["curl"] = version(["curl", "--version"])
    return info


def main():
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--restatus", required=True, help="the restatus binary to measure")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 s, one round, 256 MiB, 1,000 idle conns")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("--out", default=env.get("BENCH_OUT", os.path.join(ROOT, "target", "bench")))
    args = p.parse_args()
    quick = args.quick
    args.duration = parse_duration(env.get("BENCH_DURATION", "2s" if quick else "10s"))
    args.warmup = parse_duration(env.get("BENCH_WARMUP", "1s"))
    args.rounds = int(env.get("BENCH_ROUNDS", "1" if quick else "5"))
    args.big_bytes = int(env.get("BENCH_BIG_MIB", "256" if quick else "1024")) * 2**20
    args.idle_conns = int(env.get("BENCH_IDLE_CONNS", "1000" if quick else "10000"))
    args.scenarios = env.get("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(",")
    args.proxies = env.get("BENCH_PROXIES", ",".join(PROXIES)).split(",")
    args.port_base = int(env.get("BENCH_PORT_BASE", "18000"))
    args.perf = env.get("BENCH_PERF", "") not in ("", "0")
    import resource

    args.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    bench = Bench(args)
    started = time.time()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        log(f"work dir {bench.workdir}; duration {args.duration}s, warm-up {args.warmup}s, rounds {args.rounds}, scenarios {','.join(args.scenarios)}")
        bench.setup()
        bench.run()
    finally:
        bench.shutdown()

    summary = summarize(bench.runs)
    info = machine()
    elapsed = time.time() - started
    text = table(summary, args)
    md = table(summary, args, markdown=True)
    goals = targets(summary, args, bench.runs)
    direct = summary.get(("4d", "direct"), {}), summary.get(("4u", "direct"), {})
    other = [r.get("other_on_cpu0_pct") for r in bench.runs if r.get("other_on_cpu0_pct") is not None]

    print()
    print(f"restatus benchmark: {args.rounds} round(s), {args.duration:g} s per run, medians; proxies pinned to CPU {PROXY_CPU}, upstream and load generators to CPU {LOAD_CPU}")
    print(f"machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, {info['mem_gib']} GiB, Linux {info['kernel']}")
    print(f"tools: {info['nginx']}; {info['haproxy']}; {info['wrk']}; {info['h2load']}")
    print()
    print(text)
    print()
    if "4" in args.scenarios and direct[0]:
        print(f"4 without a proxy (curl <-> upstream on CPU {LOAD_CPU}): download {direct[0].get('gbps', 0):.2f} GB/s, upload {direct[1].get('gbps', 0):.2f} GB/s")
    for proxy, checks in bench.checks.items():
        bad = {k: v for k, (v, ok) in checks.items() if not ok}
        if bad:
            print(f"warning: {proxy} answered {bad} in the sanity check (see the expected statuses in bench.py)")
    for note in bench.notes:
        print(f"note: {note}")
    if other:
        print(f"other load on CPU {PROXY_CPU} during runs (not the proxy): median {statistics.median(other):.1f}%, max {max(other):.1f}%")
    print()
    print("targets (issue 5):")
    for line in goals:
        print("  " + line)
    print(f"\ntook {elapsed / 60:.1f} min")

    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"results-{stamp}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "machine": info,
                "settings": {k: v for k, v in vars(args).items()},
                "runs": bench.runs,
                "summary": {f"{s}/{p}": m for (s, p), m in summary.items()},
                "targets": goals,
                "table_markdown": md,
                "checks": bench.checks,
            },
            f,
            indent=1,
        )
    with open(os.path.join(args.out, f"results-{stamp}.md"), "w") as f:
        f.write(md + "\n")
    print(f"raw runs and the table in markdown: {path} (and .md)")


if __name__ == "__main__":
    main()
