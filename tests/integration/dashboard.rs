//! The dashboard in a real headless Chromium (through ChromeDriver): the job
//! list renders, a job runs with an argument from the page, and its output
//! appears with stdout and stderr told apart.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helper::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    http: Http,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.http.send("DELETE", &format!("/session/{}", self.session), &[], b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts ChromeDriver and a headless Chromium session, or `None` when they
    /// are not installed (which fails the test in CI).
    fn start(profile: &std::path::Path) -> Option<Driver> {
        if !std::path::Path::new("/usr/bin/chromedriver").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium and chromium-driver must be installed in CI (scripts/test does it)"
            );
            eprintln!("chromedriver is not installed; skipped");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = Http { addr: format!("127.0.0.1:{port}"), auth: None };
        wait_for("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&http.addr).is_ok() && http.get("/status").status == 200
        });
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let r = http.send("POST", "/session", &[("Content-Type", "application/json")], caps.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        let session = r.json()["value"]["sessionId"].as_str().unwrap().to_string();
        Some(Driver { child, http, session })
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let r = self.http.send(
            method,
            &format!("/session/{}{path}", self.session),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    /// Sends every request of the page with this Authorization header.
    fn authorize(&self, value: &str) {
        self.call("POST", "/goog/cdp/execute", json!({"cmd": "Network.enable", "params": {}}));
        self.call(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": "Network.setExtraHTTPHeaders", "params": {"headers": {"Authorization": value}}}),
        );
    }

    fn js(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    fn wait_js(&self, what: &str, script: &str) -> Value {
        let mut value = Value::Null;
        wait_for(what, Duration::from_secs(20), || {
            value = self.js(script);
            !value.is_null() && value != Value::Bool(false)
        });
        value
    }

    fn element(&self, css: &str) -> String {
        self.wait_js(css, &format!("return document.querySelector({css:?}) !== null;"));
        self.call("POST", "/element", json!({"using": "css selector", "value": css}))[ELEMENT]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[test]
fn the_dashboard_runs_a_job_with_an_argument_and_shows_its_output() {
    let root = Root::new();
    root.job("triggered", "greet", &[("greet.js", "for (const n of process.argv.slice(2)) console.log(`hello, ${n}!`);\nconsole.error('a warning on stderr');\n")]);
    root.continuous("worker", "while true; do echo working; sleep 1; done\n");
    let daemon = root.start();
    let Some(driver) = Driver::start(&root.path().join("chrome-profile")) else { return };
    let http = root.http();
    driver.authorize(http.auth.as_deref().unwrap());
    driver.call("POST", "/url", json!({"url": format!("http://{}/", http.addr)}));

    // The list shows both jobs with their status.
    let status = driver.wait_js("the job list", "const r = document.querySelector('#jobs tr[data-job=\"worker\"] .status'); return r && r.textContent.trim() === 'Running' ? r.textContent : null;");
    assert_eq!(status, "Running");
    assert!(driver.js("return document.querySelector('#jobs tr[data-job=\"greet\"]') !== null;").as_bool().unwrap());

    // Open the triggered job, run it with an argument that has a space.
    let link = driver.element("#jobs tr[data-job=\"greet\"] a");
    driver.call("POST", &format!("/element/{link}/click"), json!({}));
    let input = driver.element("#run-args");
    driver.call("POST", &format!("/element/{input}/value"), json!({"text": "\"Ada Lovelace\" Grace"}));
    let button = driver.element("#run-button");
    driver.call("POST", &format!("/element/{button}/click"), json!({}));

    // The run page shows the output, stdout and stderr told apart.
    let out = driver.wait_js(
        "stdout lines",
        "const l = [...document.querySelectorAll('#output .line.out')].map(e => e.textContent); return l.some(t => t.includes('hello, Grace!')) ? l : null;",
    );
    let out: Vec<String> = serde_json::from_value(out).unwrap();
    assert!(out.iter().any(|l| l.contains("hello, Ada Lovelace!")), "{out:?}");
    let err = driver.wait_js(
        "stderr line",
        "const e = document.querySelector('#output .line.err'); return e ? e.textContent : null;",
    );
    assert!(err.as_str().unwrap().contains("a warning on stderr"));
    let colors = driver.js("const c = s => getComputedStyle(document.querySelector(s)).color; return [c('#output .line.out'), c('#output .line.err')];");
    assert_ne!(colors[0], colors[1], "stdout and stderr look different");
    assert!(driver.js("return location.hash;").as_str().unwrap().starts_with("#/run/greet/"));
    driver.screenshot("dashboard-run.png");
    let runs = root.finished_runs("greet");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["Arguments"], json!(["Ada Lovelace", "Grace"]));
    drop(driver);
    daemon.stop();
}

#[test]
fn the_dashboard_shows_a_runs_progress_live_its_result_and_the_jobs_queue() {
    let root = Root::new();
    let gate = root.path().join("gate");
    let script = format!(
        "echo '30 loading rows' > \"$WEBJOBS_PROGRESS_FILE\"\nwhile [ ! -e {} ]; do sleep 0.05; done\necho '{{\"ok\": true}}' > \"$WEBJOBS_RESULT_FILE\"\n",
        gate.display()
    );
    root.job("triggered", "slow", &[("run.sh", &script)]);
    root.job("triggered", "bad", &[("run.sh", "exit 3\n")]);
    let daemon = root.start();
    let Some(driver) = Driver::start(&root.path().join("chrome-profile")) else { return };
    let http = root.http();
    driver.authorize(http.auth.as_deref().unwrap());
    let run = http.post("/api/triggeredwebjobs/slow/run").json()["id"].as_str().unwrap().to_string();
    driver.call("POST", "/url", json!({"url": format!("http://{}/#/run/slow/{run}", http.addr)}));
    let progress = driver.wait_js(
        "live progress",
        "const p = document.querySelector('#progress span'); return p && p.textContent.includes('loading rows') ? p.textContent : null;",
    );
    assert!(progress.as_str().unwrap().contains("30%"), "{progress}");
    std::fs::write(&gate, "").unwrap();
    let result = driver.wait_js(
        "the result once the run ended, without a reload",
        "const r = document.querySelector('#result'); return r ? r.textContent : null;",
    );
    assert!(result.as_str().unwrap().contains("\"ok\": true"), "{result}");
    // A dead request and a queued one on the job's page; Retry queues the dead one again.
    assert!(root.cli(&["run", "bad", "--wait"]).status.code() == Some(6));
    assert!(root.cli(&["run", "bad", "--in", "1h"]).status.success());
    driver.call("POST", "/url", json!({"url": format!("http://{}/#/job/triggered/bad", http.addr)}));
    driver.wait_js("the queued request", "return document.querySelector('#queued tr[data-request]') ? true : null;");
    let retry = driver.element("#dead button.retry");
    driver.call("POST", &format!("/element/{retry}/click"), json!({}));
    wait_for("the dead request ran again", Duration::from_secs(10), || root.finished_runs("bad").len() == 2);
    driver.screenshot("dashboard-queue.png");
    drop(driver);
    daemon.stop();
}

#[test]
fn a_job_page_follows_the_job_through_the_event_stream_without_a_reload() {
    let root = Root::new();
    root.continuous("worker", "exec sleep 300\n");
    root.job("triggered", "report", &[("run.sh", "echo reported\n")]);
    let daemon = root.start();
    wait_for("the worker", Duration::from_secs(10), || root.status_is("worker", "Running"));
    let Some(driver) = Driver::start(&root.path().join("chrome-profile")) else { return };
    let http = root.http();
    driver.authorize(http.auth.as_deref().unwrap());
    driver.call("POST", "/url", json!({"url": format!("http://{}/#/job/continuous/worker", http.addr)}));
    driver.wait_js("the stream open", "return document.body.dataset.live === '1' ? true : null;");
    driver.wait_js(
        "the running job",
        "const s = document.querySelector('#job-status'); return s && s.textContent.includes('Running') ? true : null;",
    );
    // Buttons follow the state: a running job can be stopped, not started.
    assert_eq!(driver.js("return [document.querySelector('#stop-button').disabled, document.querySelector('#start-button').disabled];"), json!([false, true]));
    driver.js("window.notReloaded = true; return null;");
    // Stopped elsewhere (the CLI): the page shows it, without a reload.
    assert!(root.cli(&["stop", "worker"]).status.success());
    driver.wait_js(
        "the stopped job",
        "const s = document.querySelector('#job-status'); return s && s.textContent.includes('Stopped') ? true : null;",
    );
    assert_eq!(driver.js("return window.notReloaded === true;"), json!(true));
    assert_eq!(driver.js("return [document.querySelector('#stop-button').disabled, document.querySelector('#start-button').disabled];"), json!([true, false]));
    // A triggered job's page gets its new run in the history as it happens.
    driver.call("POST", "/url", json!({"url": format!("http://{}/#/job/triggered/report", http.addr)}));
    driver.wait_js("the job page", "return document.querySelector('#history') ? true : null;");
    driver.js("window.notReloaded = true; return null;");
    assert!(root.cli(&["run", "report", "--wait"]).status.success());
    let run = root.runs("report").pop().unwrap();
    let script = format!(
        "const r = document.querySelector('#history tr[data-run=\"{run}\"]'); return r && r.textContent.includes('Success') ? true : null;"
    );
    driver.wait_js("the new run in the history", &script);
    assert_eq!(driver.js("return window.notReloaded === true;"), json!(true));
    driver.screenshot("dashboard-live.png");
    drop(driver);
    daemon.stop();
}

impl Driver {
    fn click(&self, css: &str) {
        let element = self.element(css);
        self.call("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn text(&self, css: &str) -> String {
        self.js(&format!("const e = document.querySelector({css:?}); return e ? e.textContent : '';"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self, name: &str) {
        use base64::Engine;
        let screenshot = self.call("GET", "/screenshot", json!(null));
        let png = base64::engine::general_purpose::STANDARD.decode(screenshot.as_str().unwrap()).unwrap();
        std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name), png).unwrap();
    }
}

#[test]
fn ten_thousand_jobs_are_paged_sorted_filtered_and_counted_live() {
    let root = Root::new();
    for i in 0..9_999 {
        root.job("triggered", &format!("job-{i:05}"), &[("run.sh", "echo hi\n")]);
    }
    root.continuous("worker", "exec sleep 300\n");
    let daemon = root.start();
    wait_for("the worker", Duration::from_secs(20), || root.status_is("worker", "Running"));
    let Some(driver) = Driver::start(&root.path().join("chrome-profile")) else { return };
    let http = root.http();
    driver.authorize(http.auth.as_deref().unwrap());
    driver.call("POST", "/url", json!({"url": format!("http://{}/", http.addr)}));
    driver.wait_js(
        "the first page",
        "return document.querySelector('#shown')?.textContent === '1–100 of 10000' ? true : null;",
    );
    assert_eq!(
        driver.js("return document.querySelectorAll('#jobs tbody tr').length;"),
        json!(100),
        "one page in the DOM"
    );
    let chips = driver.text("#summary");
    assert!(chips.contains("all 10000") && chips.contains("Ready 9999") && chips.contains("Running 1"), "{chips}");
    driver.click("#next");
    assert_eq!(driver.text("#shown"), "101–200 of 10000");
    assert_eq!(driver.js("return document.querySelector('#jobs tbody tr').dataset.job;"), json!("job-00100"));
    // Sorting by status, descending: the running job first.
    driver.click("button.sort[data-sort=status]");
    driver.click("button.sort[data-sort=status]");
    assert_eq!(driver.js("return document.querySelector('#jobs tbody tr').dataset.job;"), json!("worker"));
    assert_eq!(driver.text("#shown"), "1–100 of 10000", "a new order starts at its first page");
    // Filtering by name, then by a status chip.
    let filter = driver.element("#filter");
    driver.call("POST", &format!("/element/{filter}/value"), json!({"text": "job-0123"}));
    driver.wait_js(
        "the filtered list",
        "return document.querySelector('#shown')?.textContent === '1–10 of 10 (10000 in all)' ? true : null;",
    );
    driver.call("POST", &format!("/element/{filter}/clear"), json!({}));
    driver.js("document.querySelector('#filter').dispatchEvent(new Event('input')); return null;");
    driver.click("#summary .chip[data-status=Running]");
    assert_eq!(driver.text("#shown"), "1–1 of 1 (10000 in all)");
    driver.screenshot("dashboard-10000.png");
    // Stopped elsewhere: the counts change without a reload.
    driver.click("#summary .chip[data-status='']");
    driver.wait_js("the stream open", "return document.body.dataset.live === '1' ? true : null;");
    driver.js("window.notReloaded = true; return null;");
    assert!(root.cli(&["stop", "worker"]).status.success());
    driver.wait_js(
        "the new counts",
        "return document.querySelector('#summary').textContent.includes('Stopped 1') ? true : null;",
    );
    assert_eq!(driver.js("return window.notReloaded === true;"), json!(true));
    assert!(!driver.text("#summary").contains("Running"));
    // The job's page: its process, restarts, CPU and memory.
    assert!(root.cli(&["start", "worker"]).status.success());
    driver.call("POST", "/url", json!({"url": format!("http://{}/#/job/continuous/worker", http.addr)}));
    driver.wait_js(
        "pid and uptime",
        "return document.querySelector('#process')?.textContent.match(/pid \\d+, up \\d+s; 0 restarts/) ? true : null;",
    );
    driver.wait_js("CPU and memory", "const c = document.querySelector('dd.cpu').textContent, m = document.querySelector('dd.memory').textContent; return c.endsWith('%') && /KiB|MiB/.test(m) ? true : null;");
    assert_eq!(driver.js("return [document.querySelector('#restart-button').disabled, document.querySelector('#start-button').disabled];"), json!([false, true]));
    drop(driver);
    daemon.stop();
}

#[test]
fn a_large_log_shows_its_end_and_loads_earlier_lines_on_demand() {
    let root = Root::new();
    // About 14 MB of log.
    root.job("triggered", "chatty", &[("run.py", "for i in range(150000):\n    print(f'line {i:06d} ' + 'x' * 40)\n")]);
    let daemon = root.start();
    assert!(root.cli(&["run", "chatty", "--wait"]).status.success());
    let run = root.runs("chatty").pop().unwrap();
    assert!(root.run_log("chatty", &run).len() > 10_000_000);
    let Some(driver) = Driver::start(&root.path().join("chrome-profile")) else { return };
    let http = root.http();
    driver.authorize(http.auth.as_deref().unwrap());
    driver.call("POST", "/url", json!({"url": format!("http://{}/#/run/chatty/{run}", http.addr)}));
    driver.wait_js("the last line", "return [...document.querySelectorAll('#output .line')].some(l => l.textContent.includes('line 149999')) ? true : null;");
    let numbers = "return [...document.querySelectorAll('#output .line.out')].map(l => Number(/line (\\d+)/.exec(l.textContent)[1]));";
    let first: Vec<u64> = serde_json::from_value(driver.js(numbers)).unwrap();
    assert!(first.len() < 1_000, "only the end of the log is in the page: {} lines", first.len());
    assert!(driver.text("#log-size").starts_with("last 64"), "{}", driver.text("#log-size"));
    // The run has ended: nothing to cancel.
    assert_eq!(driver.js("return document.querySelector('#cancel-button').disabled;"), json!(true));
    driver.click("#earlier");
    let mut more: Vec<u64> = Vec::new();
    wait_for("earlier lines", Duration::from_secs(10), || {
        more = serde_json::from_value(driver.js(numbers)).unwrap();
        more.len() > first.len()
    });
    assert!(more.len() < 2_000, "{}", more.len());
    assert!(more.windows(2).all(|w| w[1] == w[0] + 1), "consecutive lines, none cut or doubled at the seam");
    assert_eq!(*more.last().unwrap(), 149_999);
    drop(driver);
    daemon.stop();
}

#[test]
fn refused_credentials_and_a_gone_daemon_are_said_on_the_page_on_a_narrow_screen() {
    let root = Root::new();
    root.continuous("worker", "exec sleep 300\n");
    let daemon = root.start();
    let Some(driver) = Driver::start(&root.path().join("chrome-profile")) else { return };
    let http = root.http();
    driver.call("POST", "/window/rect", json!({"width": 400, "height": 800}));
    driver.authorize(http.auth.as_deref().unwrap());
    driver.call("POST", "/url", json!({"url": format!("http://{}/", http.addr)}));
    driver.wait_js("the list", "return document.querySelector('#jobs tr[data-job=worker]') ? true : null;");
    // On a narrow screen: the essential columns, no sideways scrolling of the page.
    assert_eq!(driver.js("return getComputedStyle(document.querySelector('#jobs th.wide')).display;"), json!("none"));
    let widths = driver.js("return [document.documentElement.scrollWidth, window.innerWidth];");
    assert!(widths[0].as_i64() <= widths[1].as_i64(), "no sideways scrolling of the page: {widths}");
    // The token changed under the page: the next request's refusal is said, not a page stuck loading.
    driver.authorize("Basic d3Jvbmc6d3Jvbmc=");
    driver.js("location.hash = '#/job/continuous/worker'; return null;");
    driver.wait_js("the refusal said", "const n = document.querySelector('#notice'); return n && !n.hidden && n.textContent.includes('Credentials refused') ? true : null;");
    driver.wait_js("the page says it", "return document.querySelector('#view .error') ? true : null;");
    driver.screenshot("dashboard-refused.png");
    driver.authorize(http.auth.as_deref().unwrap());
    driver.js("location.hash = '#/'; return null;");
    driver.wait_js("the notice gone", "return document.querySelector('#notice').hidden ? true : null;");
    driver.screenshot("dashboard-narrow.png");
    // The daemon goes away: the page says so rather than showing old data silently.
    drop(daemon.kill9());
    driver.wait_js("the daemon gone, said", "const n = document.querySelector('#notice'); return n && !n.hidden && n.textContent.includes('cannot be reached') ? true : null;");
    drop(driver);
}
