//! What the controller leaves behind: finished builds take their contexts
//! and agent logs with them when they are forgotten, the journal is private
//! from its first byte, and a finished build keeps no password or token.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bakery_protocol::api::BuildState;
use bakery_protocol::Arch;
use reqwest::StatusCode;
use support::*;

#[tokio::test]
async fn forgotten_builds_take_their_contexts_and_agent_logs_with_them() {
    // Succeeds, unless its spec names the context listed in `data/hold`.
    let agent = curl_agent(
        r#"hold=$(cat "$(dirname "$BAKERY_WORK_DIR")/../hold" 2>/dev/null)
if [ -n "$hold" ] && grep -q "$hold" "$BAKERY_WORK_DIR.spec"; then sleep 300; fi
curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"outcome":"succeeded","digest":null}' "$base/result""#,
    );
    let h = Harness::new(&agent, &[("BUILD_RETENTION", "1ms")]).await;
    let used = h.upload(b"ctx of the finished build").await;
    let unused = h.upload(b"uploaded and never built").await;
    let id = h.create(&unpushed_request(&used, &[Arch::Amd64])).await;
    assert_eq!(
        h.wait_end(&id, Duration::from_secs(10)).await.state,
        BuildState::Succeeded
    );
    let data = h.dir.path().join("data");
    let agent_log = data.join(format!("work/{id}-amd64.log"));
    assert!(agent_log.exists());
    // A context a running build uses stays, however old.
    let kept = h.upload(b"ctx of a running build").await;
    std::fs::write(data.join("hold"), &kept).unwrap();
    let script_build = h.create(&unpushed_request(&kept, &[Arch::Amd64])).await;
    eventually("the held build runs", Duration::from_secs(10), async || {
        h.status(&script_build).await.tasks[0].state == bakery_protocol::api::TaskState::Running
    })
    .await;

    bakery_controller::forget_once(h.app()).await;

    let resp = h
        .http
        .get(h.url(&format!("/v1/builds/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "the build is forgotten"
    );
    assert!(!agent_log.exists(), "its agent's log went with it");
    for (key, there) in [(&used, false), (&unused, false), (&kept, true)] {
        assert_eq!(data.join(key).exists(), there, "{key}");
    }
    h.cancel(&script_build).await;
}

#[tokio::test]
async fn the_journal_is_private_from_its_first_byte() {
    let h = Harness::new("sleep 30", &[]).await;
    let data = h.dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("builds.redb")), 0o600);
    assert_eq!(mode(&data), 0o700);
}

/// Registry passwords and task tokens are needed while a build runs (a
/// restarted controller writes the index with them); the passwords are kept
/// in the build's secrets file, never in the journal, and once the build has
/// ended neither stays anywhere: not in the record the journal keeps for
/// BUILD_RETENTION, nor, once the controller has stopped (it compacts the
/// file), in a page redb freed when it rewrote the record.
#[tokio::test]
async fn a_finished_build_keeps_no_password_or_token_in_the_journal() {
    let agent = curl_agent(
        r#"while [ ! -e "$BAKERY_WORK_DIR.go" ]; do sleep 0.05; done
curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"outcome":"succeeded","digest":null}' "$base/result""#,
    );
    let mut h = Harness::new(&agent, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    let journal = h.dir.path().join("data/builds.redb");
    let vault = h.dir.path().join(format!("data/secrets/{id}.json"));
    let holds = |file: &std::path::Path| {
        std::fs::read(file).is_ok_and(|b| {
            b.windows(b"top-secret-pw".len())
                .any(|w| w == b"top-secret-pw")
        })
    };
    let holds_password = || holds(&journal);
    eventually("the agent checks in", Duration::from_secs(10), async || {
        h.status(&id).await.tasks[0].state == bakery_protocol::api::TaskState::Running
    })
    .await;
    // While the build runs, its secrets file holds the password (the
    // journal never does: redb's freed pages would keep it).
    assert!(
        holds(&vault),
        "the secrets file holds it while the build runs"
    );
    assert!(!holds_password(), "the journal does not");
    std::fs::write(h.dir.path().join(format!("data/work/{id}-amd64.go")), "").unwrap();
    assert_eq!(
        h.wait_end(&id, Duration::from_secs(10)).await.state,
        BuildState::Succeeded
    );
    h.restart(&[]).await;
    let app = h.app();
    let build = app.builds().get(&id).unwrap();
    let read = build.read();
    let password = read.credentials()[0].password.expose().to_string();
    assert_eq!(password, "", "the password is gone");
    assert!(
        read.tasks().iter().all(|t| t.token().is_empty()),
        "the tokens are gone"
    );
    drop(read);
    assert!(
        !holds_password(),
        "no copy of the password is left in the file"
    );
    assert!(
        !vault.exists(),
        "the secrets file went with the build's end"
    );
}

/// An agent that dies while the controller is down (a node reboot, the OOM
/// killer) left its work dir, with the build's logins and secrets, on disk
/// for good: no stop would delete it, the agent not being the new
/// controller's child. Adopting it finds it gone and deletes the dir.
#[tokio::test]
async fn an_agent_that_died_while_the_controller_was_down_leaves_no_work_dir() {
    let mut h = Harness::new(&curl_agent("sleep 300"), &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    eventually("the agent checks in", Duration::from_secs(10), async || {
        h.status(&id).await.tasks[0].state == bakery_protocol::api::TaskState::Running
    })
    .await;
    let work = h.dir.path().join(format!("data/work/{id}-amd64"));
    std::fs::create_dir_all(work.join("secrets")).unwrap();
    std::fs::write(work.join("secrets/0"), "left-behind-secret").unwrap();
    let data = h.data();
    h.restart_after(&[], || {
        // The agent and what it started: its process group.
        let found = std::process::Command::new("pgrep")
            .args(["-f", &format!("{data}/agent.sh")])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(!pid.is_empty(), "the agent runs");
        let killed = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .unwrap();
        assert!(killed.success(), "the agent was killed");
    })
    .await;
    let status = h.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(status.state, BuildState::Failed, "{status:?}");
    eventually(
        "the work dir is deleted",
        Duration::from_secs(10),
        async || !work.exists(),
    )
    .await;
    assert!(no_agents_left(&data));
}

/// A running build's agent token is in the journal only as its hash: a
/// build that reads `builds.redb` gets nothing an agent endpoint takes. The
/// agent's token still works after a restart (the hash is compared).
#[tokio::test]
async fn the_journal_holds_agent_tokens_only_as_hashes() {
    let agent = curl_agent(
        r#"echo "$BAKERY_TASK_TOKEN" > "$BAKERY_WORK_DIR.token"
while [ ! -e "$BAKERY_WORK_DIR.go" ]; do sleep 0.05; done
curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"outcome":"succeeded","digest":null}' "$base/result""#,
    );
    let mut h = Harness::new(&agent, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    let work = h.dir.path().join("data/work");
    let token_file = work.join(format!("{id}-amd64.token"));
    eventually("the agent checks in", Duration::from_secs(10), async || {
        h.status(&id).await.tasks[0].state == bakery_protocol::api::TaskState::Running
            && std::fs::read_to_string(&token_file).is_ok_and(|t| t.trim().len() == 64)
    })
    .await;
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    h.app().journal().flush().await.unwrap();
    let journal = std::fs::read(h.dir.path().join("data/builds.redb")).unwrap();
    let holds = |needle: &[u8]| journal.windows(needle.len()).any(|w| w == needle);
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    assert!(
        holds(hash.as_bytes()),
        "the hash is saved (the fault check)"
    );
    assert!(!holds(token.as_bytes()), "the token itself is not");
    // A restarted controller takes the agent's token by its hash, and
    // not the hash itself.
    h.restart(&[]).await;
    let build = h.app().builds().get(&id).unwrap();
    assert!(build.read().agent_may_speak(0, &token));
    assert!(!build.read().agent_may_speak(0, &hash));
    std::fs::write(work.join(format!("{id}-amd64.go")), "").unwrap();
    h.cancel(&id).await;
}
