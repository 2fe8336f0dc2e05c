//! The limiter on a hand-driven clock: no waiting, exact edges.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn limits() -> RateLimit {
    RateLimit {
        max_failures: 3,
        window: Duration::from_secs(60),
        block_for: Duration::from_secs(900),
        max_failures_per_user: 5,
        user_window: Duration::from_secs(3600),
        max_tracked: 10_000,
        redis: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Rig {
    clock: Arc<ManualClock>,
    throttle: Arc<Throttle>,
}

impl Rig {
    fn new(limits: RateLimit) -> Rig {
        let clock = Arc::new(ManualClock::default());
        let throttle = Arc::new(Throttle::with_clock(&limits, clock.clone()));
        Rig { clock, throttle }
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// One wrong guess, as the gate and the Basic verifier make it.
    async fn guess(&self, from: &str, user: Option<&str>) -> Result<(), Throttled> {
        let attempt = self.throttle.attempt(ip(from), user);
        attempt.check().await?;
        attempt.reserve_guess().await?;
        attempt.failed().await;
        Ok(())
    }

    async fn login(&self, from: &str, user: &str) -> Result<(), Throttled> {
        let attempt = self.throttle.attempt(ip(from), Some(user));
        attempt.check().await?;
        attempt.reserve_guess().await?;
        attempt.succeeded(user).await;
        Ok(())
    }

    /// A failure recorded without going through check and reserve (a malformed
    /// credential, say), while other guesses are pending.
    async fn guess_after_reserving_elsewhere(&self, from: &str) {
        self.throttle.attempt(ip(from), None).failed().await;
    }

    async fn check(&self, from: &str, user: Option<&str>) -> Result<(), Throttled> {
        self.throttle.attempt(ip(from), user).check().await
    }
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_client_gets_exactly_max_failures_guesses_then_is_blocked() {
    let rig = Rig::new(limits());
    for _ in 0..3 {
        rig.guess("192.0.2.1", None).await.unwrap();
    }
    let blocked = rig.check("192.0.2.1", None).await.unwrap_err();
    assert_eq!(blocked.by, ThrottledBy::Client);
    assert_eq!(blocked.retry_after, Duration::from_secs(900));
    // A correct password is refused too: the check comes before any verification.
    assert!(rig.login("192.0.2.1", "alice").await.is_err());
    // Others are untouched.
    rig.check("192.0.2.2", None).await.unwrap();
    assert_eq!(
        rig.throttle.stats().clients_blocked.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn failures_slide_out_of_the_window_at_its_edge() {
    // Failures at 0 s, 30 s and 1 ms before 60 s: all three within one window.
    let inside = Rig::new(limits());
    inside.guess("192.0.2.1", None).await.unwrap();
    inside.advance(30 * SEC);
    inside.guess("192.0.2.1", None).await.unwrap();
    inside.advance(30 * SEC - Duration::from_millis(1));
    inside.guess("192.0.2.1", None).await.unwrap();
    assert!(inside.check("192.0.2.1", None).await.is_err());

    // At exactly 60 s the first has left the window: two in it, not blocked.
    let edge = Rig::new(limits());
    edge.guess("192.0.2.1", None).await.unwrap();
    edge.advance(30 * SEC);
    edge.guess("192.0.2.1", None).await.unwrap();
    edge.advance(30 * SEC);
    edge.guess("192.0.2.1", None).await.unwrap();
    edge.check("192.0.2.1", None).await.unwrap();
}

#[tokio::test]
async fn a_block_lasts_block_for_and_retry_after_counts_down() {
    let rig = Rig::new(limits());
    for _ in 0..3 {
        rig.guess("192.0.2.1", None).await.unwrap();
    }
    rig.advance(600 * SEC);
    let blocked = rig.check("192.0.2.1", None).await.unwrap_err();
    assert_eq!(blocked.retry_after, 300 * SEC);
    rig.advance(300 * SEC - Duration::from_millis(1));
    let blocked = rig.check("192.0.2.1", None).await.unwrap_err();
    assert_eq!(blocked.retry_after, Duration::from_millis(1));
    rig.advance(Duration::from_millis(1));
    rig.check("192.0.2.1", None).await.unwrap();
    // A fresh budget after the block: the failures before it do not linger.
    rig.guess("192.0.2.1", None).await.unwrap();
    rig.guess("192.0.2.1", None).await.unwrap();
    rig.check("192.0.2.1", None).await.unwrap();
}

#[tokio::test]
async fn ipv6_clients_are_grouped_by_64() {
    let rig = Rig::new(limits());
    rig.guess("2001:db8:1:2::1", None).await.unwrap();
    rig.guess("2001:db8:1:2:ffff:ffff:ffff:fffe", None)
        .await
        .unwrap();
    rig.guess("2001:db8:1:2:abcd::9", None).await.unwrap();
    let blocked = rig.check("2001:db8:1:2::77", None).await.unwrap_err();
    assert_eq!(blocked.by, ThrottledBy::Client);
    // The neighbouring /64 is someone else.
    rig.check("2001:db8:1:3::1", None).await.unwrap();
    // IPv4-mapped addresses are the IPv4 client.
    for _ in 0..3 {
        rig.guess("::ffff:198.51.100.4", None).await.unwrap();
    }
    assert!(rig.check("198.51.100.4", None).await.is_err());
    assert_eq!(
        ClientKey::of(ip("2001:db8:1:2::1")).to_string(),
        "2001:db8:1:2::/64"
    );
}

#[tokio::test]
async fn concurrent_guesses_cannot_exceed_the_budget() {
    let rig = Rig::new(limits());
    // Three guesses reserved, none settled yet (all still hashing).
    let attempts: Vec<_> = (0..3)
        .map(|_| rig.throttle.attempt(ip("192.0.2.9"), Some("alice")))
        .collect();
    for a in &attempts {
        a.check().await.unwrap();
        a.reserve_guess().await.unwrap();
    }
    let fourth = rig.throttle.attempt(ip("192.0.2.9"), Some("alice"));
    fourth.check().await.unwrap_err();
    assert!(fourth.reserve_guess().await.is_err());
    // One of them turns out right: its slot comes back.
    attempts[0].succeeded("alice").await;
    let fifth = rig.throttle.attempt(ip("192.0.2.9"), Some("alice"));
    fifth.reserve_guess().await.unwrap();
}

#[tokio::test]
async fn a_username_is_throttled_across_clients_and_others_are_not() {
    let rig = Rig::new(limits());
    for i in 0..5 {
        rig.guess(&format!("203.0.113.{i}"), Some("alice"))
            .await
            .unwrap();
    }
    let throttled = rig.check("203.0.113.50", Some("alice")).await.unwrap_err();
    assert_eq!(throttled.by, ThrottledBy::User);
    assert_eq!(throttled.retry_after, Duration::from_secs(3600));
    // Another username from the same fresh client is fine, and so is the client itself.
    rig.check("203.0.113.50", Some("bob")).await.unwrap();
    rig.check("203.0.113.50", None).await.unwrap();
    // The throttle ends when the oldest failure leaves user_window.
    rig.advance(3600 * SEC);
    rig.check("203.0.113.50", Some("alice")).await.unwrap();
    assert_eq!(
        rig.throttle.stats().users_throttled.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn the_owner_keeps_working_from_a_client_that_recently_authenticated() {
    let rig = Rig::new(limits());
    rig.login("198.51.100.7", "alice").await.unwrap();
    rig.advance(10 * SEC);
    for i in 0..5 {
        rig.guess(&format!("203.0.113.{i}"), Some("alice"))
            .await
            .unwrap();
    }
    assert!(rig.check("203.0.113.99", Some("alice")).await.is_err());
    // Alice's own client is exempt from the username limit...
    rig.login("198.51.100.7", "alice").await.unwrap();
    // ...but not from its own client limit.
    for _ in 0..3 {
        rig.guess("198.51.100.7", Some("alice")).await.unwrap();
    }
    assert_eq!(
        rig.check("198.51.100.7", Some("alice"))
            .await
            .unwrap_err()
            .by,
        ThrottledBy::Client
    );
    // The exemption lasts user_window from the last success.
    let rig = Rig::new(limits());
    rig.login("198.51.100.7", "alice").await.unwrap();
    rig.advance(3600 * SEC);
    for i in 0..5 {
        rig.guess(&format!("203.0.113.{i}"), Some("alice"))
            .await
            .unwrap();
    }
    assert!(rig.check("198.51.100.7", Some("alice")).await.is_err());
}

#[tokio::test]
async fn correct_logins_in_flight_never_block_anyone() {
    let rig = Rig::new(limits());
    // Three correct logins still hashing fill the budget...
    let logins: Vec<_> = (0..3)
        .map(|_| rig.throttle.attempt(ip("192.0.2.7"), Some("alice")))
        .collect();
    for a in &logins {
        a.reserve_guess().await.unwrap();
    }
    // ...so a fourth waits a moment, not a window...
    let refused = rig.check("192.0.2.7", None).await.unwrap_err();
    assert_eq!(refused.retry_after, SEC);
    // ...and a typo settling meanwhile does not start a block.
    rig.guess_after_reserving_elsewhere("192.0.2.7").await;
    for a in &logins {
        a.succeeded("alice").await;
    }
    rig.check("192.0.2.7", Some("alice")).await.unwrap();
}

#[tokio::test]
async fn a_guess_abandoned_mid_check_still_counts() {
    let rig = Rig::new(limits());
    for _ in 0..3 {
        let attempt = rig.throttle.attempt(ip("192.0.2.8"), Some("alice"));
        attempt.check().await.unwrap();
        attempt.reserve_guess().await.unwrap();
        // The client disconnects: the request future, and the attempt, are dropped.
        drop(attempt);
    }
    // The failures are recorded by tasks the drops spawned.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let blocked = rig.check("192.0.2.8", None).await.unwrap_err();
    assert_eq!(blocked.by, ThrottledBy::Client);
    assert_eq!(blocked.retry_after, 900 * SEC);
}

#[tokio::test]
async fn cheap_failures_without_a_reservation_count_too() {
    let rig = Rig::new(limits());
    for _ in 0..3 {
        rig.throttle.attempt(ip("192.0.2.1"), None).failed().await;
    }
    assert!(rig.check("192.0.2.1", None).await.is_err());
}

#[tokio::test]
async fn a_million_distinct_clients_stay_within_max_tracked() {
    let limits = RateLimit {
        max_tracked: 10_000,
        ..limits()
    };
    let rig = Rig::new(limits);
    for i in 0..1_000_000u32 {
        let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        rig.throttle
            .attempt(client, Some(&format!("u{i}")))
            .failed()
            .await;
    }
    let (clients, users) = rig.throttle.tracked();
    assert!(clients <= 10_000, "{clients} clients tracked");
    assert!(users <= 10_000, "{users} usernames tracked");
    assert!(clients > 0 && users > 0);
}

#[test]
fn usernames_are_escaped_and_capped_for_logs() {
    assert_eq!(escape_for_log("alice"), "alice");
    assert_eq!(escape_for_log("a\nb\"c\u{1b}"), "a\\nb\\\"c\\u{1b}");
    let long = "x".repeat(500);
    assert_eq!(escape_for_log(&long).len(), 64 + 3);
}

/// Collects formatted log lines for the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn each_block_and_unblock_is_logged_once_with_the_name_escaped() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rig = Rig::new(limits());
    for _ in 0..3 {
        rig.guess("192.0.2.1", Some("mallory\nFAKE LINE"))
            .await
            .unwrap();
    }
    // Further refused attempts log nothing more.
    for _ in 0..3 {
        assert!(rig.guess("192.0.2.1", Some("mallory")).await.is_err());
    }
    let text = logs.text();
    assert_eq!(text.matches("client blocked").count(), 1, "{text}");
    assert!(text.contains("client=192.0.2.1"), "{text}");
    assert!(text.contains(r"mallory\nFAKE LINE"), "{text}");
    assert!(!text.contains("unblocked"), "{text}");

    // The block ends: the logger wakes (tokio's paused clock skips the wait) and says so.
    rig.advance(900 * SEC);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let text = logs.text();
    assert_eq!(
        text.matches("client 192.0.2.1 unblocked").count(),
        1,
        "{text}"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(logs.text().matches("unblocked").count(), 1);
}
