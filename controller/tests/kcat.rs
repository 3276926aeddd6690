//! The `kcat` that `dev/setup.sh` installs (`$BSSCTL_TOOLS/bin/kcat`: Debian's kcat with the
//! librdkafka of the confluent-kafka wheel) against a stack of two tansu brokers on the durable
//! store: metadata (-L), produce (-P), consume (-C) and a consumer group (-G) that joins in
//! seconds and resumes from its committed offsets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::StackEnv;

fn kcat() -> PathBuf {
    let p = controller::tools::tools_dir().join("kcat");
    assert!(
        p.is_file(),
        "{} is missing: run `bash dev/setup.sh` (dev/setup.d/events.sh installs the kcat wrapper)",
        p.display()
    );
    p
}

/// Runs kcat with `args`, feeding `input`; returns stdout, panics with stderr on failure.
fn run(args: &[&str], input: Option<&str>) -> String {
    let mut c = Command::new(kcat());
    c.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(i) = input {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kcat {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kcat_lists_produces_consumes_and_joins_groups() {
    let env = StackEnv::new("bssctl-kcat-", "kcat", "  kafka: {brokers: 2}\n");
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let b0 = format!("127.0.0.1:{}", env.port(9092));
    let b1 = format!("127.0.0.1:{}", env.port(9093));
    let both = format!("{b0},{b1}");

    // -L: Debian's librdkafka 2.0 fails here with "Read underflow"; the wrapper's does not.
    let meta = run(&["-b", &b0, "-L", "-m", "10"], None);
    assert!(
        meta.contains("topic \"bss.order.events\" with 3 partitions"),
        "{meta}"
    );
    assert!(meta.contains("broker 111 at"), "{meta}");

    // -P through one broker, -C through the other: both read and write the same store.
    let topic = "bss.order.events";
    let lines: Vec<String> = (0..50).map(|i| format!("order-{i}")).collect();
    run(
        &["-b", &b0, "-P", "-t", topic, "-K", ":", "-X", "acks=all"],
        Some(
            &lines
                .iter()
                .map(|l| format!("k{}:{l}\n", l.len()))
                .collect::<String>(),
        ),
    );
    let read = run(
        &["-b", &b1, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
        None,
    );
    let mut got: Vec<&str> = read.lines().collect();
    got.sort_unstable();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want);

    // -G: a balanced consumer group with the documented settings joins in seconds, reads every
    // record once, commits, and a second run of the same group resumes after them.
    let group = [
        "-b",
        &both,
        "-G",
        "kcat-test",
        topic,
        "-e",
        "-q",
        "-X",
        "auto.offset.reset=earliest",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=1000",
        "-X",
        "enable.auto.commit=true",
        "-X",
        "auto.commit.interval.ms=200",
    ];
    let started = Instant::now();
    let first = run(&group, None);
    let took = started.elapsed();
    assert_eq!(first.lines().count(), lines.len(), "{first}");
    assert!(
        took.as_secs_f64() < 10.0,
        "joining, reading 50 records and leaving took {took:?}"
    );
    run(&["-b", &b1, "-P", "-t", topic], Some("after-1\nafter-2\n"));
    let second = run(&group, None);
    let mut second: Vec<&str> = second.lines().collect();
    second.sort_unstable();
    assert_eq!(second, ["after-1", "after-2"]);
}
