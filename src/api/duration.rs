//! Durations as the Gateway API writes them (GEP-2257: `1h30m`, `500ms`), read with the
//! gateway-api crate's `Duration` for weir's CRDs, HTTPRoute timeouts and command-line flags.

use std::time::Duration;

/// Reads a GEP-2257 duration: one to four `<number><unit>` parts with nothing between them, each
/// number one to five digits, each unit `h`, `m`, `s` or `ms`. `0s` is accepted (callers that
/// need a positive duration check that themselves). The error says how to write one.
pub fn parse(s: &str) -> Result<Duration, String> {
    let d: gateway_api::Duration = s.parse().map_err(|_| {
        format!(
            "{s:?} is not a Gateway API duration: write one to four parts of 1 to 5 digits and a unit (h, m, s or ms) with nothing between them, e.g. 1h30m, 2s or 1500ms"
        )
    })?;
    Ok(Duration::new(d.as_secs(), d.subsec_nanos()))
}

/// `d` written the GEP-2257 way (`1s500ms`); sub-millisecond parts are dropped.
pub fn format(d: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    gateway_api::Duration::try_from(ms).map_or_else(|e| format!("{ms:?} ({e})"), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gateway_api_durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("2s", ms(2_000)),
            ("500ms", ms(500)),
            ("1m", ms(60_000)),
            ("1h30m", ms(5_400_000)),
            ("1h30m30s500ms", ms(5_430_500)),
            ("0s", Duration::ZERO),
            ("010s", ms(10_000)),
            ("99999ms", ms(99_999)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_one_and_says_how_to_write_it() {
        for bad in [
            "",
            "5",
            "s",
            "-1s",
            "+1s",
            "1.5s",
            " 1s",
            "1h 30m",
            "5sec",
            "1d",
            "1us",
            "100000ms",
            "1h1m1s1ms1h",
            "1S",
            "5s5",
            "PT5S",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.starts_with(&format!("{bad:?} is not a Gateway API duration")), "{err}");
            assert!(err.contains("e.g. 1h30m"), "{err}");
        }
    }

    #[test]
    fn formats_the_gateway_api_way() {
        assert_eq!(format(Duration::from_millis(1_500)), "1s500ms");
        assert_eq!(format(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
