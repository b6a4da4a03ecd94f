//! The operator interface of the real binary (ARCHITECTURE §6).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_directline-gateway");

fn run_expecting_exit(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("DIRECTLINE_SECRET")
        .env_remove("DIRECTLINE_GATEWAY_TOKEN_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_config_is_one_line_and_exit_64() {
    let dir = std::env::temp_dir().join(format!("dlgw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_file = dir.join("bad.toml");
    std::fs::write(&bad_file, "listen = 12\n").unwrap();
    let bad_path = bad_file.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["--listen", "nowhere"], vec![]),
        (
            vec!["--upstream", "https://directline.botframework.com"],
            vec![],
        ),
        (vec!["--upstream", "ftp://x"], vec![]),
        (vec![], vec![("DIRECTLINE_GATEWAY_TOKEN_KEY", "too-short")]),
        (vec!["--config", bad_path], vec![]),
        (vec!["--config", "/nonexistent/gateway.toml"], vec![]),
    ];
    for (args, env) in cases {
        let (code, stderr) = run_expecting_exit(&args, &env);
        assert_eq!(code, 64, "{args:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one clear line: {stderr}");
        assert!(lines[0].starts_with("directline-gateway: "), "{stderr}");
    }
}

/// Runs the binary expecting exit 64 and one stderr line holding every one of `expected`.
fn assert_one_line_64(args: &[&str], expected: &[&str]) {
    let (code, stderr) = run_expecting_exit(args, &[]);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!((code, lines.len()), (64, 1), "{args:?}: {stderr}");
    for text in expected {
        assert!(lines[0].contains(text), "{args:?}: {text:?} in {stderr}");
    }
}

#[test]
fn command_line_mistakes_say_what_is_wrong() {
    assert_one_line_64(
        &["--log-format", "xml"],
        &["invalid value 'xml'", "human, json"],
    );
    assert_one_line_64(
        &["--upstream", "directline.botframework.com"],
        &["upstream", "must start with https://"],
    );
    assert_one_line_64(
        &[
            "--listen",
            "127.0.0.1:18071",
            "--admin-listen",
            "127.0.0.1:18071",
        ],
        &["admin_listen", "(listen)", "own port"],
    );
    // A port some other process holds: the line names the listener that could not bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let listen = format!("127.0.0.1:{port}");
    assert_one_line_64(
        &["--listen", &listen, "--admin-listen", "127.0.0.1:0"],
        &[&listen, "(listen)", "in use"],
    );
    assert_one_line_64(
        &["--listen", "127.0.0.1:0", "--admin-listen", &listen],
        &[&listen, "(admin_listen)"],
    );
}

#[test]
fn config_file_mistakes_give_file_line_column_and_key() {
    let dir = support::process::TempDir::new("cli-config");
    let unquoted = dir.write("unquoted.toml", "# test\nlisten = 127.0.0.1:18080\n");
    assert_one_line_64(
        &["--config", &unquoted],
        &[&format!("{unquoted}:2:"), "listen", "needs quotes"],
    );
    let typo = dir.write("typo.toml", "[stream]\nresume_budgett = \"5m\"\n");
    assert_one_line_64(
        &["--config", &typo],
        &[
            &format!("{typo}:2:1: stream.resume_budgett: "),
            "unknown field",
        ],
    );
}

#[test]
fn help_names_the_environment_and_exits_0() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for text in [
        "DIRECTLINE_SECRET",
        "DIRECTLINE_GATEWAY_TOKEN_KEY",
        "DIRECTLINE_GATEWAY_PSEUDONYM_KEY",
        "validate",
        "SIGHUP",
        "exits 64",
    ] {
        assert!(help.contains(text), "{text} in {help}");
    }
    let emulator = Command::new(BIN)
        .args(["emulator", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&emulator.stdout);
    assert!(help.contains("[default: 127.0.0.1:3978]"), "{help}");
    assert!(help.contains("--log-format"), "{help}");
}

/// The first run a newcomer makes: nothing to warn about, no colour codes in a pipe, and
/// durations a person can read.
#[test]
fn the_first_run_logs_no_warning_and_rounded_durations() {
    let gateway = support::process::GatewayProcess::start(
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request =
            http::Request::post(format!("{}/v3/directline/tokens/generate", gateway.base))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let access = loop {
        if let Some(line) = gateway
            .logs()
            .into_iter()
            .find(|l| l.contains("duration_ms="))
        {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line: {:?}",
            gateway.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs = gateway.logs();
    assert!(logs.iter().all(|l| !l.contains("WARN")), "{logs:#?}");
    assert!(
        logs.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI codes in a pipe: {logs:#?}"
    );
    let key_lines: Vec<&String> = logs.iter().filter(|l| l.contains("token key")).collect();
    assert_eq!(key_lines.len(), 1, "{logs:#?}");
    assert!(key_lines[0].contains("INFO"), "{}", key_lines[0]);
    let duration = access
        .split("duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let decimals = duration.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 2, "duration_ms={duration} in {access}");
}

#[test]
fn embedded_run_serves_a_conversation_and_drains_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("DIRECTLINE_SECRET")
        .env(
            "DIRECTLINE_GATEWAY_TOKEN_KEY",
            "cli-test-token-key-0123456789abcdef",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("prints its address").unwrap();
    let base = first.rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");
    let domain = lines.next().unwrap().unwrap();
    assert!(
        domain.contains(&format!("{base}/v3/directline")),
        "{domain}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let post = |path: String, token: Option<String>, body: &'static str| {
            let mut request = http::Request::post(format!("{base}{path}"))
                .header("content-type", "application/json");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            client.request(
                request
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        body.as_bytes(),
                    )))
                    .unwrap(),
            )
        };
        use http_body_util::BodyExt;
        let read = |response: http::Response<hyper::body::Incoming>| async move {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let generated = read(
            post("/v3/directline/tokens/generate".into(), None, "")
                .await
                .unwrap(),
        )
        .await;
        let token = generated["token"].as_str().unwrap().to_owned();
        let started = read(
            post("/v3/directline/conversations".into(), Some(token), "{}")
                .await
                .unwrap(),
        )
        .await;
        let id = started["conversationId"].as_str().unwrap().to_owned();
        let token = started["token"].as_str().unwrap().to_owned();
        let posted = post(
            format!("/v3/directline/conversations/{id}/activities"),
            Some(token.clone()),
            r#"{"type":"message","text":"hi"}"#,
        )
        .await
        .unwrap();
        assert_eq!(posted.status(), 200);
        let request = http::Request::get(format!(
            "{base}/v3/directline/conversations/{id}/activities"
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
        let set = read(client.request(request).await.unwrap()).await;
        let texts: Vec<&str> = set["activities"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["text"].as_str())
            .collect();
        assert_eq!(texts, ["hi", "echo: hi"]);
    });

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "drains and exits 0 on SIGTERM: {status:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn emulator_subcommand_serves_direct_line() {
    let mut child = Command::new(BIN)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            "cli-emulator-secret",
        ])
        .env_remove("DIRECTLINE_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("emulator starts");
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let base = line.rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut statuses = Vec::new();
        for secret in ["cli-emulator-secret", "wrong"] {
            let request = http::Request::post(format!("{base}/v3/directline/tokens/generate"))
                .header("authorization", format!("Bearer {secret}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            statuses.push(client.request(request).await.unwrap().status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [200, 403]);
    let _ = child.kill();
    let _ = child.wait();
}

/// The binary run to its exit within a bound (a `validate` that served instead of exiting
/// fails here rather than hanging): exit code, stdout, stderr.
fn run_bounded(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("DIRECTLINE_SECRET")
        .env_remove("DIRECTLINE_GATEWAY_TOKEN_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let deadline = std::time::Instant::now() + support::WAIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `validate` reads the whole configuration as a start would and binds nothing: a good one
/// gives exit 0 and one summary line, even with its listen port taken; a bad one the usual
/// one line and exit 64. Bare numbers are seconds and bytes.
#[test]
fn validate_checks_the_configuration_without_binding() {
    let dir = support::process::TempDir::new("cli-validate");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let secret = dir.write("secret", "a-direct-line-secret-0123456789");
    let good = dir.write(
        "good.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"https://europe.directline.botframework.com\"\n\
             secret_file = \"{secret}\"\nshutdown_grace = 20\n[limits]\nactivity_body = 65536\n"
        ),
    );
    let (code, stdout, stderr) = run_bounded(&["validate", "--config", &good], &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with("directline-gateway: configuration OK"),
        "{stdout}"
    );
    assert!(lines[0].contains("default → https://europe.directline.botframework.com/"));
    assert!(!stdout.contains("a-direct-line-secret"), "{stdout}");
    // The gateway's own --config before the subcommand works the same.
    assert_eq!(run_bounded(&["--config", &good, "validate"], &[]).0, 0);

    // A secret file that is not there, an unknown key, a token key too short: exit 64.
    let missing = dir.write(
        "missing.toml",
        "upstream = \"https://directline.botframework.com\"\nsecret_file = \"/nonexistent/secret\"\n",
    );
    let typo = dir.write("typo.toml", "shutdown_grace = 20\nshutdown_graec = 20\n");
    for (args, env, expected) in [
        (
            vec!["validate", "--config", missing.as_str()],
            vec![],
            "/nonexistent/secret",
        ),
        (
            vec!["validate", "--config", typo.as_str()],
            vec![],
            "shutdown_graec",
        ),
        (
            vec!["validate", "--config", good.as_str()],
            vec![("DIRECTLINE_GATEWAY_TOKEN_KEY", "short")],
            "token key",
        ),
    ] {
        let (code, stdout, stderr) = run_bounded(&args, &env);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!((code, lines.len()), (64, 1), "{args:?}: {stderr}");
        assert!(lines[0].starts_with("directline-gateway: "), "{stderr}");
        assert!(lines[0].contains(expected), "{expected:?} in {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
    drop(taken);
}

/// A plain-http upstream on another machine would carry the secret in clear: refused at
/// start with exit 64 unless `allow_http_upstream = true`; loopback is always fine.
#[test]
fn a_plain_http_upstream_off_this_machine_is_refused_unless_allowed() {
    let env = [("DIRECTLINE_SECRET", "a-direct-line-secret-0123456789")];
    let (code, _, stderr) = run_bounded(&["--upstream", "http://directline.example.com"], &env);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("upstream")
            && stderr.contains("in clear")
            && stderr.contains("allow_http_upstream"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let dir = support::process::TempDir::new("cli-http");
    let allowed = dir.write(
        "allowed.toml",
        "upstream = \"http://directline.example.com\"\nallow_http_upstream = true\n",
    );
    let (code, stdout, stderr) = run_bounded(&["validate", "--config", &allowed], &env);
    assert_eq!(code, 0, "{stdout} {stderr}");
    let (code, stdout, stderr) =
        run_bounded(&["--upstream", "http://127.0.0.1:3978", "validate"], &env);
    assert_eq!(code, 0, "{stdout} {stderr}");
}

/// With `--log-format json` even the failure before serving is a JSON line.
#[test]
fn json_mode_failures_are_json_too() {
    let (code, stdout, stderr) =
        run_bounded(&["--log-format", "json", "--upstream", "ftp://x"], &[]);
    assert_eq!(code, 64);
    assert!(stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["message"].as_str().unwrap().contains("upstream"),
        "{line}"
    );
    let (code, stdout, _) = run_bounded(&["--log-format", "json", "validate"], &[]);
    assert_eq!(code, 0);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .starts_with("configuration OK")
    );
}

/// The signed-in demo as documented: the emulator with its test issuer, a gateway with
/// `[auth]` naming it, a token from `/demo/token`: tokens/generate answers 200 with it and
/// 401 without. The issuer only listens on loopback.
#[test]
fn the_signed_in_demo_runs_from_two_commands() {
    assert_eq!(
        run_bounded(&["emulator", "--issuer-listen", "0.0.0.0:0"], &[]).0,
        64,
        "the demo issuer is loopback only"
    );
    let mut emulator = Command::new(BIN)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--issuer-listen",
            "127.0.0.1:0",
        ])
        .env_remove("DIRECTLINE_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("emulator starts");
    let mut lines = BufReader::new(emulator.stdout.take().unwrap()).lines();
    let mut next_url = || {
        let line = lines.next().unwrap().unwrap();
        line.split(' ')
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("an address in {line}"))
            .to_owned()
    };
    let (upstream, issuer) = (next_url(), next_url());
    let dir = support::process::TempDir::new("cli-signed-in");
    let config = dir.write(
        "signed-in.toml",
        &format!(
            "upstream = \"{upstream}\"\n[auth]\nissuer = \"{issuer}\"\naudience = \"api://directline-gateway\"\nname_claim = \"name\"\n"
        ),
    );
    let gateway = support::process::GatewayProcess::start(
        &[
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            ("DIRECTLINE_SECRET", "emulator-secret"),
            (
                "DIRECTLINE_GATEWAY_PSEUDONYM_KEY",
                "cli-demo-pseudonym-key-0123456789abcdef",
            ),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let get = http::Request::get(format!("{issuer}/demo/token?sub=alice"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let answer = client.request(get).await.unwrap();
        let id_token = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .unwrap()
            .to_bytes();
        let id_token = String::from_utf8(id_token.to_vec()).unwrap();
        let mut statuses = Vec::new();
        for bearer in [Some(id_token.as_str()), None] {
            let mut request =
                http::Request::post(format!("{}/v3/directline/tokens/generate", gateway.base));
            if let Some(bearer) = bearer {
                request = request.header("authorization", format!("Bearer {bearer}"));
            }
            let request = request
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            statuses.push(client.request(request).await.unwrap().status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [200, 401]);
    let _ = emulator.kill();
    let _ = emulator.wait();
}
