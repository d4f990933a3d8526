//! Plain Rust errors and reason codes of the core; `lib.rs` turns them into Python exceptions.

use std::fmt::{self, Write};

/// Why a whole request body is unusable (`BodyError` in Python). `Display` is the exact `.detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    NotJson,
    NoMessagesList,
    NotObject,
    Empty,
    TooMany {
        count: usize,
        max: usize,
    },
    /// A line-protocol body that is not UTF-8.
    NotUtf8,
    /// A line-protocol body of more lines than allowed.
    TooManyLines {
        count: usize,
        max: usize,
    },
    /// A `precision` line protocol does not know.
    Precision(String),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson => f.write_str("body is not valid JSON"),
            Self::NoMessagesList => {
                f.write_str("body must be a JSON object with a \"messages\" list")
            }
            Self::NotObject => f.write_str("body must be a JSON object"),
            Self::Empty => f.write_str("batch is empty"),
            Self::TooMany { count, max } => {
                write!(f, "batch has {count} messages; at most {max} are allowed")
            }
            Self::NotUtf8 => f.write_str("body is not valid UTF-8"),
            Self::TooManyLines { count, max } => {
                write!(f, "body has {count} lines; at most {max} are allowed")
            }
            Self::Precision(p) => write!(
                f,
                "precision \"{p}\" is not one of ns, us, \u{b5}s, u, ms, s, m, h"
            ),
        }
    }
}

/// A caller's mistake in using a `Batch` or `TenantBuffers` (`ValueError` in Python).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    VerdictCount {
        expected: usize,
        got: usize,
    },
    UnknownReason(String),
    NotValidationReason(String),
    MissingReason {
        group: usize,
    },
    NegativeAllowed {
        group: usize,
    },
    AlreadyResolved,
    AlreadyAppended,
    AlreadyAdmitted,
    UnknownFieldType(String),
    BadLines,
    BadMaxLines,
    MarkOrder {
        mark: u64,
        last: u64,
    },
    MarkDelivered {
        mark: u64,
    },
    InFlight {
        tenant: String,
    },
    NothingInFlight {
        tenant: String,
    },
    SettleTooMany {
        lines: usize,
        in_flight: usize,
    },
    TenantTooLong {
        len: usize,
    },
    BadSetting {
        name: &'static str,
        rule: &'static str,
    },
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VerdictCount { expected, got } => {
                write!(f, "expected {expected} verdicts, got {got}")
            }
            // Quoted as sent, not escaped: the caller passed this very string.
            Self::UnknownReason(code) => write!(f, "unknown reason code \"{code}\""),
            Self::NotValidationReason(code) => {
                write!(f, "\"{code}\" is not a validation reason code")
            }
            Self::MissingReason { group } => {
                write!(f, "verdict {group} rejects items but gives no reason")
            }
            Self::NegativeAllowed { group } => write!(f, "verdict {group} allows a negative count"),
            Self::AlreadyResolved => f.write_str("verdicts were already applied to this batch"),
            Self::AlreadyAppended => f.write_str("this batch was already appended"),
            Self::AlreadyAdmitted => f.write_str("field types were already checked for this batch"),
            Self::UnknownFieldType(name) => write!(f, "unknown field type \"{name}\""),
            Self::BadLines => f.write_str(
                "lines must be line_count newline-terminated lines, and line_count >= 1",
            ),
            Self::BadMaxLines => f.write_str("max_lines must be at least 1"),
            Self::MarkOrder { mark, last } => {
                write!(f, "mark {mark} is below the last mark given ({last})")
            }
            Self::MarkDelivered { mark } => write!(f, "mark {mark} is already delivered"),
            Self::InFlight { tenant } => {
                write!(f, "tenant \"{tenant}\" already has a body in flight")
            }
            Self::NothingInFlight { tenant } => {
                write!(f, "tenant \"{tenant}\" has no body in flight")
            }
            Self::SettleTooMany { lines, in_flight } => {
                write!(f, "{lines} lines are not in flight (only {in_flight} are)")
            }
            Self::TenantTooLong { len } => {
                write!(
                    f,
                    "a tenant of {len} bytes cannot be logged (at most 65535)"
                )
            }
            Self::BadSetting { name, rule } => write!(f, "{name} must be {rule}"),
        }
    }
}

/// Per-item reason code of the batch endpoints. Declaration order is `reason_counts()` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidMsgType,
    InvalidSchema,
    InvalidTimestamp,
    InvalidMetrics,
    PayloadTooLarge,
    Unauthorized,
    SiteMismatch,
    RateLimited,
    BufferFull,
    /// The registry could not be asked (it failed, or its answer was evicted before use), or in
    /// NATS mode JetStream did not acknowledge the tenant's publish: retryable, unlike UNAUTHORIZED.
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::InvalidMsgType,
        Reason::InvalidSchema,
        Reason::InvalidTimestamp,
        Reason::InvalidMetrics,
        Reason::PayloadTooLarge,
        Reason::Unauthorized,
        Reason::SiteMismatch,
        Reason::RateLimited,
        Reason::BufferFull,
        Reason::Unavailable,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            Reason::InvalidMsgType => "INVALID_MSG_TYPE",
            Reason::InvalidSchema => "INVALID_SCHEMA",
            Reason::InvalidTimestamp => "INVALID_TIMESTAMP",
            Reason::InvalidMetrics => "INVALID_METRICS",
            Reason::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Reason::Unauthorized => "UNAUTHORIZED",
            Reason::SiteMismatch => "SITE_MISMATCH",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::BufferFull => "BUFFER_FULL",
            Reason::Unavailable => "UNAVAILABLE",
        }
    }

    /// The sentence that explains a validation reason to a client (the single-message route's
    /// `detail`); `None` for the reasons the shell decides, whose details carry its settings.
    pub const fn detail(self) -> Option<&'static str> {
        match self {
            Reason::InvalidMsgType => Some("msg_type must be telemetry or heartbeat"),
            Reason::InvalidSchema => {
                Some("the message does not match the schema (ids, site_id, seq)")
            }
            Reason::InvalidTimestamp => {
                Some("ts must be an RFC 3339 timestamp within InfluxDB's range")
            }
            Reason::InvalidMetrics => {
                Some("metrics must be an object of at most 256 numeric or boolean values")
            }
            Reason::PayloadTooLarge
            | Reason::Unauthorized
            | Reason::SiteMismatch
            | Reason::RateLimited
            | Reason::BufferFull
            | Reason::Unavailable => None,
        }
    }

    /// `detail` of the reason with this code; an error for any other string.
    pub fn detail_of(code: &str) -> Result<&'static str, UsageError> {
        Reason::from_code(code)?
            .detail()
            .ok_or_else(|| UsageError::NotValidationReason(code.to_owned()))
    }

    pub fn from_code(code: &str) -> Result<Reason, UsageError> {
        Reason::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .ok_or_else(|| UsageError::UnknownReason(code.to_owned()))
    }
}

/// Per-message error code of the Shelly endpoint: what was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellyReason {
    Message,
    Src,
    Timestamp,
    Params,
    Reading,
}

impl ShellyReason {
    pub const ALL: [ShellyReason; 5] = [
        ShellyReason::Message,
        ShellyReason::Src,
        ShellyReason::Timestamp,
        ShellyReason::Params,
        ShellyReason::Reading,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            ShellyReason::Message => "INVALID_MESSAGE",
            ShellyReason::Src => "INVALID_SRC",
            ShellyReason::Timestamp => "INVALID_TIMESTAMP",
            ShellyReason::Params => "INVALID_PARAMS",
            ShellyReason::Reading => "INVALID_READING",
        }
    }
}

/// Characters of a client's value a detail quotes; longer values end in `…`.
pub const QUOTED_CHARS: usize = 64;

/// `s` in single quotes for a detail, cut to `QUOTED_CHARS` characters, control, line
/// separator and bidirectional formatting characters written as `\uXXXX`: a detail never
/// carries a client's unbounded or terminal-controlling text into a response or a log line.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(QUOTED_CHARS * 4) + 8);
    push_quoted(&mut out, s);
    out
}

/// `quoted`, appended to `out`: a detail is written in one buffer.
pub fn push_quoted(out: &mut String, s: &str) {
    out.push('\'');
    // Most quoted values are short printable ASCII: one byte scan, one copy.
    if s.len() <= QUOTED_CHARS && s.bytes().all(|b| matches!(b, b' '..=b'~')) {
        out.push_str(s);
        out.push('\'');
        return;
    }
    // Runs of characters that need no escape are copied whole, not char by char.
    let mut plain = 0;
    for (i, (at, c)) in s.char_indices().enumerate() {
        if i == QUOTED_CHARS {
            out.push_str(&s[plain..at]);
            out.push('…');
            out.push('\'');
            return;
        }
        if matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}' | '\u{200e}' | '\u{200f}'
            | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.push_str(&s[plain..at]);
            // Writing to a `String` cannot fail.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
            plain = at + c.len_utf8();
        }
    }
    out.push_str(&s[plain..]);
    out.push('\'');
}

/// A rate or burst in a detail: at most three decimals, trailing zeros dropped.
pub fn short_number(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_bounds_and_escapes_client_text() {
        assert_eq!(quoted("temp"), "'temp'");
        assert_eq!(quoted("a\u{1b}[31m\n"), "'a\\u001b[31m\\u000a'");
        assert_eq!(quoted("x\u{202e}y"), "'x\\u202ey'");
        let long = "é".repeat(100);
        assert_eq!(quoted(&long), format!("'{}…'", "é".repeat(64)));
        assert_eq!(quoted(&"a".repeat(64)), format!("'{}'", "a".repeat(64)));
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(100.0), "100");
        assert_eq!(short_number(1.0 / 3.0), "0.333");
    }

    #[test]
    fn body_error_details_are_exact() {
        assert_eq!(BodyError::NotJson.to_string(), "body is not valid JSON");
        assert_eq!(
            BodyError::NoMessagesList.to_string(),
            "body must be a JSON object with a \"messages\" list"
        );
        assert_eq!(
            BodyError::NotObject.to_string(),
            "body must be a JSON object"
        );
        assert_eq!(BodyError::Empty.to_string(), "batch is empty");
        assert_eq!(
            BodyError::TooMany {
                count: 101,
                max: 100
            }
            .to_string(),
            "batch has 101 messages; at most 100 are allowed"
        );
    }

    #[test]
    fn reason_codes_round_trip_in_fixed_order() {
        let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [
                "INVALID_MSG_TYPE",
                "INVALID_SCHEMA",
                "INVALID_TIMESTAMP",
                "INVALID_METRICS",
                "PAYLOAD_TOO_LARGE",
                "UNAUTHORIZED",
                "SITE_MISMATCH",
                "RATE_LIMITED",
                "BUFFER_FULL",
                "UNAVAILABLE"
            ]
        );
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Ok(r));
        }
        assert!(Reason::from_code("invalid_schema").is_err());
    }

    #[test]
    fn validation_reasons_have_a_detail_and_no_other_code_has() {
        assert_eq!(
            Reason::detail_of("INVALID_MSG_TYPE"),
            Ok("msg_type must be telemetry or heartbeat")
        );
        let with_detail: Vec<&str> = Reason::ALL
            .into_iter()
            .filter(|r| r.detail().is_some())
            .map(Reason::code)
            .collect();
        assert_eq!(
            with_detail,
            [
                "INVALID_MSG_TYPE",
                "INVALID_SCHEMA",
                "INVALID_TIMESTAMP",
                "INVALID_METRICS"
            ]
        );
        assert_eq!(
            Reason::detail_of("BUFFER_FULL").map_err(|e| e.to_string()),
            Err("\"BUFFER_FULL\" is not a validation reason code".to_owned())
        );
        assert_eq!(
            Reason::detail_of("a\nb").map_err(|e| e.to_string()),
            Err("unknown reason code \"a\nb\"".to_owned())
        );
        let metrics = Reason::InvalidMetrics.detail().unwrap_or_default();
        assert!(metrics.contains(&crate::parse::MAX_METRICS.to_string()));
    }
}
