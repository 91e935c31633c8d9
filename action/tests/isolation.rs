//! One controller, two builds: the red team's script as a regression test.
//! A build's pre-script tries to read another running build's registry
//! password and secrets file, the journal with agent tokens, every other
//! work directory and every process's environment, and to post a failed
//! result for the other build; on the local platform with namespaces
//! (root, a subordinate id range: scripts/setup gives root one) each try
//! finds nothing, and the other build succeeds.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const PASSWORD: &str = "victims-registry-password-93af";

fn curl_json(url: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "-m", "5", url])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn wait_end(url: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = curl_json(&format!("{url}/v1/builds/{id}"));
        if matches!(
            status["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "build {id} did not end: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_build_cannot_read_or_sabotage_another_on_the_local_platform() {
    let controller = controller(&[]);
    let url = controller.url();
    let data = controller.dir.path().join("data");
    let log = std::fs::read_to_string(controller.dir.path().join("controller.log")).unwrap();
    assert!(
        log.contains("each agent runs in its own user, mount and PID namespaces"),
        "this test needs root and a subordinate id range for root (scripts/setup): {log}"
    );
    let locked = registry_with_login("victim", PASSWORD);
    let open = registry();
    // The victim: a login the controller keeps in its secrets file while
    // the build runs, and a pre-script that keeps it running a while.
    let victim = project(&[
        ("Dockerfile", "FROM scratch\nCOPY a /a\n"),
        ("a", "victim\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  pre-script: sleep 8\n  kaniko-credentials:\n    - {{registry: {r}, username: victim, password: {PASSWORD}}}\n  kaniko:\n    destination: {r}/iso/victim:1\n",
                r = locked.host()
            ),
        ),
    ]);
    let victim_id = submit_detached(victim.path(), &url);
    let victim_task = format!("{victim_id}-amd64");
    let d = data.display();
    // The attacker: everything the red team tried, each line saying what it found.
    let attack = format!(
        r#"set +e
echo "ATTACK ls-data: $(ls -A {d} 2>&1 | tr '\n' ' ')"
echo "ATTACK ls-work: $(ls -A {d}/work 2>&1 | tr '\n' ' ')"
echo "ATTACK secrets: $(cat {d}/secrets/{victim_id}.json 2>&1 | head -c 300)"
echo "ATTACK journal: $(head -c 100000 {d}/builds.redb 2>&1 | tr -dc '[:print:]' | head -c 300)"
echo "ATTACK victim-work: $(ls -A {d}/work/{victim_task} 2>&1 | tr '\n' ' ')"
echo "ATTACK environ: $(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c BAKERY_TASK_TOKEN)"
echo "ATTACK processes: $(ls /proc | grep -c '^[0-9]')"
for t in $(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | sed -n 's/^BAKERY_TASK_TOKEN=//p'); do
  echo "ATTACK sabotage: $(curl -s -o /dev/null -w '%{{http_code}}' -H "Authorization: Bearer $t" -H 'content-type: application/json' -d '{{"outcome":"failed","error":"sabotaged"}}' "$BAKERY_CONTROLLER_URL/v1/agent/tasks/{victim_task}/result")"
done
echo "ATTACK done: yes""#
    );
    let attacker = project(&[
        ("Dockerfile", "FROM scratch\nCOPY a /a\n"),
        ("a", "attacker\n"),
        ("attack.sh", &attack),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  pre-script: sh attack.sh\n  kaniko:\n    destination: {}/iso/attacker:1\n",
                open.host()
            ),
        ),
    ]);
    // Once the victim's agent runs (its secrets file exists).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join(format!("secrets/{victim_id}.json")).exists()
        || curl_json(&format!("{url}/v1/builds/{victim_id}"))["tasks"][0]["state"] != "running"
    {
        assert!(Instant::now() < deadline, "the victim never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let vault = std::fs::read_to_string(data.join(format!("secrets/{victim_id}.json"))).unwrap();
    assert!(
        vault.contains(PASSWORD),
        "the fault is there: the password is on disk"
    );
    let attacker_id = submit_detached(attacker.path(), &url);
    let attacked = wait_end(&url, &attacker_id);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            &format!("{url}/v1/builds/{attacker_id}/logs"),
        ])
        .output()
        .unwrap();
    let attack_log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(attacked["state"], "succeeded", "{attacked}\n{attack_log}");
    let line = |what: &str| {
        attack_log
            .lines()
            .find(|l| l.contains(&format!("ATTACK {what}:")))
            .unwrap_or_else(|| panic!("no {what} line: {attack_log}"))
            .to_string()
    };
    assert!(line("done").contains("yes"));
    assert!(!attack_log.contains(PASSWORD), "{attack_log}");
    assert!(!attack_log.contains("victim\\\""), "{attack_log}");
    assert!(
        line("ls-data").contains("ATTACK ls-data: work "),
        "{}",
        line("ls-data")
    );
    assert!(!line("ls-work").contains(&victim_id), "{}", line("ls-work"));
    assert!(
        line("secrets").contains("No such file"),
        "{}",
        line("secrets")
    );
    assert!(
        line("journal").contains("No such file"),
        "{}",
        line("journal")
    );
    assert!(
        line("victim-work").contains("No such file"),
        "{}",
        line("victim-work")
    );
    assert!(
        line("environ").contains("environ: 1"),
        "only its own agent's token: {}",
        line("environ")
    );
    assert!(!attack_log.contains("sabotage: 2"), "{attack_log}");
    let victim_end = wait_end(&url, &victim_id);
    assert_eq!(victim_end["state"], "succeeded", "{victim_end}");
}
