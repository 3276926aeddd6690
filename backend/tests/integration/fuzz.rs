//! The served OpenAPI document: every documented operation is routed, and an external fuzzer
//! (schemathesis, `tests/fuzz_api.sh`) finds no 5xx and no response breaking the document,
//! against the real binary over real PostgreSQL, Redis and tansu.

use crate::api::fixture;
use crate::test_support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let f = fixture().await;
    let ops = backend::openapi::operations();
    assert!(ops.len() > 40, "{} operations", ops.len());
    for (method, path) in ops {
        let concrete = path
            .replace("{entity}", "customer")
            .replace("{group}", "g1")
            .replace(['{', '}'], "")
            .replace("/id", &format!("/{}", uuid::Uuid::new_v4()))
            .replace("/snapshot/", &format!("/{}/", uuid::Uuid::new_v4()));
        let r = f.api.send(&method, &concrete, None, Some(API_KEY)).await;
        assert_ne!(
            r.body["code"], "ROUTE_NOT_FOUND",
            "{method} {path} ({concrete}) is documented but not routed"
        );
        assert_ne!(
            r.status, 405,
            "{method} {path} is documented but not routed"
        );
        assert!(
            r.status < 500 || r.status == 503,
            "{method} {concrete}: {} {}",
            r.status,
            r.body
        );
    }
    let doc = f.api.send("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.body["openapi"], "3.0.3");
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let stack = Stack::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &stack.pg,
        &stack.redis,
        &stack.kafka.brokers(),
        &format!("127.0.0.1:{port}"),
    );
    // The `migrate` subcommand (idempotent: the stack is already migrated), with the password
    // given by the environment instead of the file.
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    let no_file = dir.path().join("no-password-file.yaml");
    std::fs::write(
        &no_file,
        cfg_text.replace("  passwordFile: ", "  #passwordFile: "),
    )
    .unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_bss-backend"))
        .args(["migrate", "--config"])
        .arg(&no_file)
        .env("BSS_DATABASE_PASSWORD", DB_PASSWORD)
        .env("BSS_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success(), "bss-backend migrate failed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bss-backend"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("BSS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("backend.log")).unwrap())
        .spawn()
        .unwrap();
    let api = Api::new(format!("127.0.0.1:{port}").parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = api
            .client
            .get(format!("{}/health/ready", api.base))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "backend never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some real data so that lookups can also hit existing rows.
    crate::api::customer(&api, "Fuzz").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_api.sh");
    let examples = std::env::var("BSS_FUZZ_EXAMPLES").unwrap_or_else(|_| "30".into());
    let out = tokio::task::spawn_blocking({
        let base = api.base.clone();
        move || {
            Command::new("bash")
                .arg(script)
                .arg(base)
                .arg(API_KEY)
                .arg(examples)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: String = stdout
        .chars()
        .rev()
        .take(6000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    eprintln!("{tail}");
    assert!(
        out.status.success(),
        "schemathesis reported failures (exit {:?}):\n{tail}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}
