//! The `flightdeck` binary itself: the main job (`--demo`) runs to completion on
//! its own, bad flags are clear errors, and on Unix a SIGTERM shuts a real server
//! down gracefully (its open stream ends with a terminal event, exit code 0).
//! Everything listens on 127.0.0.1 only, and every process started is waited for.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_flightdeck");

/// Runs the binary to completion, killing it if it outlives `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("FLIGHTDECK_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("flightdeck {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_demo_runs_over_http_and_exits_by_itself() {
    let output = run(&["--demo"], Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for line in [
        "gateway on http://127.0.0.1:",
        "cancels after 6 tokens -> {\"status\":\"cancelled\"}",
        "ends: cancelled after 6 tokens",
        "ivy   asks \"What is Rust?\"",
        "cached",
        "upstream streams started  5",
        "coalesced (joined)        4",
        "cache hits                1",
        "upstreams aborted         1",
        "every member of a flight read the same answer: yes",
        "server shut down gracefully; tasks still running: 0",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn bad_flags_are_clear_errors_not_panics() {
    for (args, needle) in [
        (
            &["--max-concurrent-streams", "0"][..],
            "--max-concurrent-streams",
        ),
        (&["--idle-timeout", "soon"][..], "--idle-timeout"),
        (&["--listen", "nowhere"][..], "--listen"),
        (
            &["--upstream-url", "ftp://example.invalid"][..],
            "not http or https",
        ),
        (&["--log", "[[["][..], "--log"),
    ] {
        let output = run(args, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let help = run(&["--help"], Duration::from_secs(20));
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--queue-capacity",
        "--cache-ttl",
        "--attach-timeout",
        "--upstream-url",
        "--body-limit",
        "--openai-coalesce",
        "FLIGHTDECK_IDLE_TIMEOUT",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[cfg(unix)]
#[test]
fn sigterm_ends_open_streams_and_exits_zero() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let address = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server exited early"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Drain the log so the server never blocks on a full pipe.
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });

    let request = |raw: String| {
        let mut tcp = TcpStream::connect(&address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp.write_all(raw.as_bytes()).unwrap();
        tcp
    };
    let body = r#"{"payload": {"prompt": "endless", "tokens": 100000, "delay_ms": 10}}"#;
    let mut submit = request(format!(
        "POST /v1/requests HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut answer = String::new();
    submit.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let id = answer
        .split("\"id\":")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .to_owned();
    let mut stream = request(format!(
        "GET /v1/requests/{id}/stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    ));
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: chunk") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream closed early");
        seen.extend_from_slice(&buffer[..n]);
    }

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The open stream ends with a terminal event, then the connection closes.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("the stream did not end: {e}"),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("event: failed") && seen.contains("\"kind\":\"shutdown\""),
        "no terminal event in:\n{seen}"
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("the server did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
}
