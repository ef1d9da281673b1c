//! The web view: logged in through `polarizer open`'s one-time link, with a session cookie that the
//! pages and the API take as they take the operator token, and driven in real headless Chromium
//! (tests/web/view.py) as a developer following a run would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use polarizer_e2e::*;
use reqwest::StatusCode;

/// `polarizer open PATH --no-browser`'s link.
fn login_link(cluster: &TestCluster, path: &str) -> String {
    let output = cluster.operator(&["open", path, "--no-browser"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        url.starts_with(&format!("http://{}/login?code=", cluster.http)),
        "{url}"
    );
    url
}

/// `polarizer trigger --repo REPO --all`: the run it made.
fn trigger_all(cluster: &TestCluster, repo: &Path) -> u64 {
    let triggered = cluster.operator(&[
        "trigger",
        "--repo",
        repo.to_str().unwrap(),
        "--all",
        "--json",
    ]);
    assert!(
        triggered.status.success(),
        "{}",
        String::from_utf8_lossy(&triggered.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&triggered.stdout).unwrap()["run"]
        .as_u64()
        .unwrap()
}

/// What the browser test needs, or why it cannot run here.
fn browser() -> Result<PathBuf, String> {
    for needed in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(needed).exists() {
            return Err(format!(
                "{needed} is missing (Debian's chromium, chromium-driver)"
            ));
        }
    }
    let python = PathBuf::from("/usr/bin/python3");
    let selenium = std::process::Command::new(&python)
        .args(["-c", "import selenium.webdriver"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !selenium {
        return Err("Debian's python3-selenium is missing".into());
    }
    Ok(python)
}

#[test]
fn the_web_view_follows_a_run_of_the_demo_repository_live_in_a_real_browser() {
    // No agent yet: the demo's run waits queued until the browser watches it.
    let mut cluster = TestCluster::new_coordinator_only();
    let examples = cluster.path("examples");
    polarizer::cli::examples::materialize(&examples).unwrap();
    let run = trigger_all(&cluster, &examples);
    let ready = cluster.path("browser-watching");

    // Without a session, a page says how to log in; the API answers 401 as before.
    let base = format!("http://{}", cluster.http);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, cookie: Option<&str>| {
        runtime.block_on(async {
            let mut request = client.get(format!("{base}{path}"));
            if let Some(cookie) = cookie {
                request = request.header("Cookie", cookie);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            (status, headers, response.text().await.unwrap())
        })
    };
    let (status, headers, page) = get(&format!("/runs/{run}"), None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        page.contains(&format!("polarizer open /runs/{run}")),
        "{page}"
    );
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));

    // A link logs in once: a cookie (HttpOnly, SameSite), then the page it names.
    let link = login_link(&cluster, &format!("/runs/{run}"));
    let path = link.strip_prefix(&base).unwrap().to_string();
    let (status, headers, _) = get(&path, None);
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], format!("/runs/{run}").as_str());
    let set_cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let (status, _, page) = get(&path, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a link is good once");
    assert!(page.contains("expired or was used"), "{page}");
    let (status, _, page) = get(&format!("/runs/{run}"), Some(&cookie));
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("/tests/register/unregister") && page.contains("data-page=\"run\""),
        "{page}"
    );
    let (status, _, runs) = get("/api/runs", Some(&cookie));
    assert_eq!(status, StatusCode::OK, "{runs}");
    let (status, _, _) = get("/api/runs", Some("polarizer_session=forged"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another site cannot act with a visitor's cookie; this one can.
    let post = |origin: Option<&str>| {
        runtime.block_on(async {
            let mut request = client
                .post(format!("{base}/api/runs/999/cancel"))
                .header("Cookie", &cookie);
            if let Some(origin) = origin {
                request = request.header("Origin", origin);
            }
            request.send().await.unwrap().status()
        })
    };
    assert_eq!(post(Some("https://evil.example")), StatusCode::UNAUTHORIZED);
    assert_eq!(post(None), StatusCode::UNAUTHORIZED);
    assert_eq!(
        post(Some(&base)),
        StatusCode::NOT_FOUND,
        "no run 999, but allowed"
    );
    let refused = cluster.operator(&["open", "//evil.example/", "--no-browser"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a path of the web view"));

    let python = match browser() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("skipped the browser part: {why}");
            return;
        }
    };
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("web-artifacts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("web")
        .join("view.py");
    let mut browse = std::process::Command::new(&python);
    browse
        .arg(&script)
        .env("LOGIN_URL", login_link(&cluster, &format!("/runs/{run}")))
        .env("RUN", run.to_string())
        .env("READY", &ready)
        .env("ARTIFACTS", &artifacts)
        .env("NO_PROXY", "*")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut browsing = browse.spawn().unwrap();
    // When the page shows the run queued and live, an agent comes and runs it.
    wait_for(
        "the browser watching the queued run",
        Duration::from_secs(90),
        || ready.exists() || browsing.try_wait().unwrap().is_some(),
    );
    cluster.start_agent("vm-1", &[]);
    // Each of the script's waits has its own deadline (90 s).
    let output = browsing.wait_with_output().unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
        "the browser test failed (screenshots in {}):\nstdout: {}\nstderr: {}\ncoordinator: {}",
        artifacts.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        cluster
            .coordinator
            .as_ref()
            .map(|c| c.log_text())
            .unwrap_or_default()
    );
}

/// The browser bridge: a page's redux-shaped store, in real Chromium, sends its state changes and actions
/// through clients/js to the agent's `--emit-websocket`, and they are stored as events of the test that
/// was running, in order; what is not an event is refused with the reason.
#[test]
fn the_browser_bridge_stores_a_pages_state_changes_as_events_of_the_running_test() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bridge = format!("127.0.0.1:{port}");
    let mut cluster = TestCluster::new_coordinator_only();
    cluster.start_agent("vm-1", &[("--emit-websocket", &bridge)]);
    wait_for("vm-1 online", Duration::from_secs(30), || {
        cluster.online_names() == ["vm-1"]
    });
    let marker = cluster.path("gate-open");
    let repo = git_repo(
        &cluster.path("repo"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                &format!(
                    "/cockpit:\n  test: while [ ! -e {} ]; do sleep 0.05; done\n",
                    marker.display()
                ),
            ),
        ],
    );
    let run = trigger_all(&cluster, &repo);
    wait_for("/tests/cockpit running", Duration::from_secs(60), || {
        let shown = cluster.operator(&["runs", "show", &run.to_string(), "--json"]);
        serde_json::from_slice::<serde_json::Value>(&shown.stdout)
            .is_ok_and(|run| run["tests"][0]["status"] == "running")
    });

    // What is not an event is answered with the reason, and the connection stays usable.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{bridge}"))
            .await
            .unwrap();
        let mut ask = async |message: Message| {
            socket.send(message).await.unwrap();
            match socket.next().await {
                Some(Ok(Message::Text(text))) => text.to_string(),
                other => panic!("no answer: {other:?}"),
            }
        };
        assert!(ask(Message::text("{\"kind\": \"Bad Kind\", \"data\": 1}"))
            .await
            .starts_with("error: kind \"Bad Kind\""));
        assert!(ask(Message::text("not json"))
            .await
            .starts_with("error: not a JSON object"));
        assert!(ask(Message::binary(vec![1, 2]))
            .await
            .contains("text message"));
        assert_eq!(
            ask(Message::text(
                "{\"kind\": \"probe\", \"data\": {\"from\": \"rust\"}}"
            ))
            .await,
            "ok"
        );
    });

    match browser() {
        Ok(python) => {
            let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("web-artifacts");
            let output = std::process::Command::new(python)
                .arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("web")
                        .join("bridge.py"),
                )
                .env("BRIDGE_URL", format!("ws://{bridge}"))
                .env("MARKER", &marker)
                .env("ARTIFACTS", &artifacts)
                .env("NO_PROXY", "*")
                .output()
                .unwrap();
            assert!(
                output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
                "the bridge's browser test failed (screenshots in {}):\nstdout: {}\nstderr: {}",
                artifacts.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
        Err(why) => {
            eprintln!("skipped the browser part: {why}");
            std::fs::write(&marker, "").unwrap();
        }
    }

    let mut app = Vec::new();
    wait_for("the page's events stored", Duration::from_secs(60), || {
        app = cluster.stored_events(&["--run", &run.to_string(), "--kind", "app"]);
        app.len() >= 3 || (browser().is_err() && app.is_empty())
    });
    for event in &app {
        assert_eq!(event["test"], "/tests/cockpit", "{event}");
        assert_eq!(event["agent"], "vm-1", "{event}");
    }
    if browser().is_ok() {
        let data: Vec<&serde_json::Value> = app.iter().map(|event| &event["data"]).collect();
        assert_eq!(
            data,
            [
                &serde_json::json!("unregistered"),
                &serde_json::json!({ "type": "register" }),
                &serde_json::json!("registered"),
            ],
            "{app:#?}"
        );
        assert_eq!(app[2]["summary"], "registration: registered");
    }
    let probe = cluster.stored_events(&["--run", &run.to_string(), "--kind", "probe"]);
    assert_eq!(probe.len(), 1, "{probe:#?}");
    assert_eq!(probe[0]["test"], "/tests/cockpit");
}

/// A CA and a certificate for 127.0.0.1 it signed, made with openssl: (ca.pem, cert, key at 0600).
fn certificate_for_loopback(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "http.key",
                "-out",
                "http.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "http.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "http.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("http.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        dir.join("ca.pem"),
        dir.join("http.pem"),
        dir.join("http.key"),
    )
}

/// With `http_cert_file` and `http_key_file`, the HTTP port speaks only HTTPS: probes, the API, the
/// login links and the Python client (with `ca_file`) all go over TLS; a key others can read is refused.
#[test]
fn the_http_port_serves_https_with_a_configured_certificate() {
    let certificates = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate_for_loopback(certificates.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // A key readable by others is refused, naming the key.
    let loose = certificates.path().join("loose.key");
    std::fs::copy(key, &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let checked = std::process::Command::new(binary("polarizer"))
        .args(["serve", "--check-config", "--data-dir"])
        .arg(certificates.path().join("data"))
        .args(["--http-cert-file", cert, "--http-key-file"])
        .arg(&loose)
        .output()
        .unwrap();
    let complaint = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success());
    assert!(
        complaint.contains("http_key_file") && complaint.contains("chmod 600"),
        "{complaint}"
    );

    let cluster = TestCluster::new_coordinator_only_with(&[
        "--heartbeat-interval-ms",
        "200",
        "--http-cert-file",
        cert,
        "--http-key-file",
        key,
    ]);
    let token = read(&cluster.data_dir.join("operator-token"));
    let base = format!("https://{}", cluster.http);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    runtime.block_on(async {
        let health = trusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let agents = trusting
            .get(format!("{base}/api/agents"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(agents.status(), StatusCode::OK);
        // Plain HTTP is not answered; neither is a client that does not trust the certificate.
        let plain = reqwest::Client::builder().no_proxy().build().unwrap();
        let clear = plain
            .get(format!("http://{}/healthz", cluster.http))
            .send()
            .await;
        assert!(clear.is_err() || !clear.unwrap().status().is_success());
        assert!(plain.get(format!("{base}/healthz")).send().await.is_err());
    });
    let link = cluster.operator(&["open", "/agents", "--no-browser"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).starts_with(&format!("{base}/login?code=")),
        "{}",
        String::from_utf8_lossy(&link.stdout)
    );

    let python = match python_client() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("skipped the Python client over HTTPS: {why}");
            return;
        }
    };
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import os\nfrom polarizer_client import Client\n\
             c = Client(os.environ['URL'], token_file=os.environ['TOKEN_FILE'], ca_file=os.environ['CA_FILE'])\n\
             assert c.agents() == [] and c.runs() == [], 'answers'\nprint('ok')",
        ])
        .env("URL", &base)
        .env("TOKEN_FILE", cluster.data_dir.join("operator-token"))
        .env("CA_FILE", &ca)
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
