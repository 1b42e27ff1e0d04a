//! One plain line on stderr for the small processes beside the manager (the
//! guardian, the container init), which do not run its logging: stamped
//! with the UTC time of day like the manager's lines, so the container's
//! log reads in order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `HH:MM:SS.mmmZ who: what` on stderr.
pub fn say(who: &str, what: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("{} {who}: {what}", time_of_day(now));
}

/// `HH:MM:SS.mmmZ` of `since_epoch`.
fn time_of_day(since_epoch: Duration) -> String {
    let s = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::time_of_day;
    use std::time::Duration;

    #[test]
    fn lines_carry_the_utc_time_of_day() {
        // 2026-12-01T22:48:59.042Z
        let t = Duration::from_millis(1_796_165_339_042);
        assert_eq!(time_of_day(t), "22:48:59.042Z");
    }
}
