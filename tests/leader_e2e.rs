//! Leader election: two operator replicas, only the leader reconciles; SIGKILL of the leader hands
//! over within the lease duration, without a duplicate remote instance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::eventually;
use support::operator::{Env, Operator, echo_spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let lease = format!("leader-{:08x}", fastrand::u32(..));
    let args =
        ["--leader-elect", "--leader-election-lease-name", &lease, "--leader-election-lease-duration", "6s"];
    let mut env = Env::start_with("leader", &args).await;
    let mut standby = Operator::start(&env.ns, &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    let second_leads = loop {
        let leaders = [&env.operator, &standby].map(|o| o.logs().contains("became the leader"));
        if leaders.iter().filter(|l| **l).count() == 1 {
            break leaders[1];
        }
        if Instant::now() >= deadline {
            let lines = |o: &Operator| {
                o.logs()
                    .lines()
                    .filter(|l| l.contains("lead") || l.contains("lease") || l.contains("ERROR"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "not exactly one leader after 20 s ({leaders:?});\nfirst:\n{}\nsecond:\n{}",
                lines(&env.operator),
                lines(&standby)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if second_leads {
        // From here on, env.operator is the leader.
        std::mem::swap(&mut env.operator, &mut standby);
    }

    env.create_instance("one", echo_spec()).await;
    env.wait_ready("one").await;
    assert!(env.operator.logs().contains("plan step="), "the leader reconciles");
    assert!(!standby.logs().contains("plan step="), "the standby does not");
    assert_eq!(standby.get("readyz").await, (200, "ok".to_string()), "a standby is ready");

    env.operator.kill();
    let killed_at = Instant::now();
    eventually("the standby to take over", Duration::from_secs(20), || {
        let logs = standby.logs();
        async move { logs.contains("became the leader").then_some(()) }
    })
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("takeover after {:.1} s", takeover.as_secs_f64());
    assert!(takeover <= Duration::from_secs(6 + 4), "takeover within the lease duration: {takeover:?}");

    env.create_instance("two", echo_spec()).await;
    env.wait_ready("two").await;
    env.wait_ready("one").await;
    let remote = env.control.instances().await.unwrap();
    assert_eq!(remote.len(), 2, "no duplicate remote instance across the handover");
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 2);
}
