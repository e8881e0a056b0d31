//! [Cache behaviour](crate#cache-behaviour)'s timing as arithmetic; a leaf module.

use std::time::Duration;

use tokio::time::Instant;

/// The default of [`refresh_ahead`](crate::UnderstoryAuthBuilder::refresh_ahead).
pub const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// The default of [`expiry_margin`](crate::UnderstoryAuthBuilder::expiry_margin).
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The fraction of the refresh margin drawn at random and added to it, per token.
pub(crate) const REFRESH_JITTER: f64 = 0.2;

/// The builder's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) refresh_ahead: Duration,
    pub(crate) expiry_margin: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refresh_ahead: DEFAULT_REFRESH_AHEAD,
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
        }
    }
}

/// A token's instants: expiry, end of use, and start of the background refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) expires_at: Instant,
    pub(crate) usable_until: Instant,
    pub(crate) refresh_at: Instant,
}

impl Schedule {
    /// `jitter` in `0.0..1.0` draws the random part of the refresh margin.
    pub(crate) fn new(
        obtained_at: Instant,
        lifetime: Duration,
        jitter: f64,
        timing: Timing,
    ) -> Self {
        let skew = expiry_skew(lifetime, timing);
        let margin = refresh_margin(lifetime, timing);
        let jitter = margin.mul_f64(jitter * REFRESH_JITTER);
        // Lifetimes are clamped to a day; an overflow would count as expired.
        let expires_at = obtained_at.checked_add(lifetime).unwrap_or(obtained_at);
        let usable_until = expires_at.checked_sub(skew).unwrap_or(obtained_at);
        let refresh_at = usable_until
            .checked_sub(margin + jitter)
            .unwrap_or(obtained_at)
            .max(obtained_at);
        Schedule {
            expires_at,
            usable_until,
            refresh_at,
        }
    }
}

/// 5 % of the lifetime, at most the expiry margin.
fn expiry_skew(lifetime: Duration, timing: Timing) -> Duration {
    (lifetime / 20).min(timing.expiry_margin)
}

/// 10 % of the lifetime, at least the refresh-ahead margin, at most half of it.
fn refresh_margin(lifetime: Duration, timing: Timing) -> Duration {
    (lifetime / 10).max(timing.refresh_ahead).min(lifetime / 2)
}

/// How long before its expiry a token may be due, whatever the jitter; never larger for a
/// shorter lifetime, so a shared token is due no later than by its original schedule.
#[cfg(feature = "shared-cache")]
pub(crate) fn refresh_lead(lifetime: Duration, timing: Timing) -> Duration {
    expiry_skew(lifetime, timing) + refresh_margin(lifetime, timing).mul_f64(1.0 + REFRESH_JITTER)
}

/// How long before its expiry a token of `lifetime` is due for refresh at the latest,
/// whatever the jitter draws: a token with more left than this is not yet due for anyone.
#[cfg(feature = "app")]
pub(crate) fn latest_refresh_lead(lifetime: Duration, timing: Timing) -> Duration {
    expiry_skew(lifetime, timing) + refresh_margin(lifetime, timing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_places_tokens_by_their_lifetime_and_the_jitter_drawn() {
        let now = Instant::now();
        let at = |millis: u64| now + Duration::from_millis(millis);
        // (lifetime, usable until, refresh at with no jitter, with the most jitter)
        let cases = [
            (3600, at(3_595_000), at(3_235_000), at(3_163_000)),
            (600, at(595_000), at(535_000), at(523_000)),
            (4, at(3_800), at(1_800), at(1_400)),
            (1, at(950), at(450), at(350)),
        ];
        for (lifetime, usable_until, earliest, latest) in cases {
            let lifetime = Duration::from_secs(lifetime);
            let calm = Schedule::new(now, lifetime, 0.0, Timing::default());
            assert_eq!(calm.expires_at, now + lifetime);
            assert_eq!(calm.usable_until, usable_until, "{lifetime:?}");
            assert_eq!(calm.refresh_at, earliest, "{lifetime:?}");
            assert_eq!(
                Schedule::new(now, lifetime, 1.0, Timing::default()).refresh_at,
                latest,
                "{lifetime:?}"
            );
        }
    }

    #[test]
    fn the_builder_timing_moves_the_refresh_and_the_end_of_use() {
        let now = Instant::now();
        let timing = Timing {
            refresh_ahead: Duration::from_secs(600),
            expiry_margin: Duration::from_secs(30),
        };
        let hour = Schedule::new(now, Duration::from_secs(3600), 0.0, timing);
        assert_eq!(hour.usable_until, now + Duration::from_secs(3570));
        assert_eq!(hour.refresh_at, now + Duration::from_secs(2970));
        // Short tokens keep their proportional margins: 5 % and at most half the life.
        let short = Schedule::new(now, Duration::from_secs(60), 0.0, timing);
        assert_eq!(short.usable_until, now + Duration::from_secs(57));
        assert_eq!(short.refresh_at, now + Duration::from_secs(27));
    }
}
