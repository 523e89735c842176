//! The audit line: one per request, with who called, what, the rule that allowed it, the status,
//! the bytes and the times.
//!
//! As a `tracing` event its dozen fields went one by one through `Visit` and a `dyn fmt::Write`:
//! a large share of the proxy's per-request work. The binary installs a sink here,
//! and the line is written from a plain struct into the same batch as the other log lines, in the
//! same text or JSON shape. `RUST_LOG` still decides (target `audit`, level INFO). Without a sink
//! (the library embedded elsewhere) the line goes out as an ordinary `tracing` event whose message
//! holds the fields.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use tracing::Level;

use crate::telemetry::log_format::{LineFormat, Rendered, key};
use crate::telemetry::log_writer::BatchedStderr;

pub const TARGET: &str = "audit";

/// `request_id`, `method` and `outcome` are written as they are: hex digits, an HTTP method
/// (parsed as a token) and a fixed word need no quoting or escaping.
pub struct AuditLine<'a> {
    pub request_id: &'a str,
    pub client: &'a Rendered,
    /// The connection's source address (behind a load balancer, the balancer's).
    pub peer: SocketAddr,
    /// The allow rule that admitted the request, if one did.
    pub rule: Option<&'a Rendered>,
    pub method: &'a str,
    /// Without the query, which may carry anything.
    pub path: &'a str,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_us: u64,
    /// Absent when the request never reached Azure DevOps.
    pub upstream_us: Option<u64>,
    pub outcome: &'static str,
    /// Sent again with a renewed token after Azure DevOps refused the first.
    pub replayed: bool,
    /// Forwarded in learn mode although no rule admitted it: `learn=would_deny`.
    pub would_deny: bool,
}

impl AuditLine<'_> {
    /// The fields in order; absent ones are left out of the line, as `tracing` leaves out `None`.
    fn write_fields(&self, format: LineFormat, out: &mut impl fmt::Write) -> fmt::Result {
        format.plain_field(out, key!("request_id"), self.request_id)?;
        format.rendered_field(out, key!("client"), self.client)?;
        format.address_field(out, key!("peer"), self.peer)?;
        if let Some(rule) = self.rule {
            format.rendered_field(out, key!("rule"), rule)?;
        }
        format.plain_field(out, key!("method"), self.method)?;
        format.str_field(out, key!("path"), self.path)?;
        format.u64_field(out, key!("status"), u64::from(self.status))?;
        format.u64_field(out, key!("request_bytes"), self.request_bytes)?;
        format.u64_field(out, key!("response_bytes"), self.response_bytes)?;
        format.u64_field(out, key!("duration_us"), self.duration_us)?;
        if let Some(upstream_us) = self.upstream_us {
            format.u64_field(out, key!("upstream_us"), upstream_us)?;
        }
        format.plain_field(out, key!("outcome"), self.outcome)?;
        if self.replayed {
            format.bool_field(out, key!("replayed"), true)?;
        }
        if self.would_deny {
            format.plain_field(out, key!("learn"), "would_deny")?;
        }
        Ok(())
    }

    fn write_line(&self, format: LineFormat, out: &mut impl fmt::Write) -> fmt::Result {
        format.start(out, &Level::INFO, TARGET)?;
        self.write_fields(format, out)?;
        format.end(out)
    }
}

struct Sink {
    format: LineFormat,
    out: BatchedStderr,
    /// `RUST_LOG`'s verdict on audit lines, taken once: the filter cannot change while the
    /// process runs, and asking it costs every request.
    enabled: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

const MAX_KEPT_LINE_BYTES: usize = 16 * 1024;

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Sends audit lines to `out` in `format` from now on; the first call wins.
/// Call once the subscriber is installed: it decides, now, whether audit lines are written.
pub fn install(format: LineFormat, out: BatchedStderr) {
    let enabled = tracing::enabled!(target: TARGET, Level::INFO);
    let _ = SINK.set(Sink {
        format,
        out,
        enabled,
    });
}

pub fn record(line: &AuditLine<'_>) {
    match SINK.get() {
        Some(sink) if !sink.enabled => {}
        Some(sink) => {
            let write = |buf: &mut String| {
                buf.clear();
                // Writing into a String cannot fail.
                let _ = line.write_line(sink.format, buf);
                sink.out.write_lines(buf.as_bytes());
            };
            // Called from a drop, possibly while the thread is going away with its locals.
            let reused = LINE.try_with(|buf| {
                let mut buf = buf.borrow_mut();
                write(&mut buf);
                // A line with a huge path must not pin its buffer for the thread's life.
                if buf.capacity() > MAX_KEPT_LINE_BYTES {
                    *buf = String::new();
                }
            });
            if reused.is_err() {
                write(&mut String::new());
            }
        }
        None if !tracing::enabled!(target: TARGET, Level::INFO) => {}
        None => {
            let mut fields = String::new();
            let _ = line.write_fields(LineFormat::Text, &mut fields);
            tracing::info!(target: TARGET, "{}", fields.trim_start());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(
        client: &'a Rendered,
        rule: Option<&'a Rendered>,
        upstream_us: Option<u64>,
        replayed: bool,
    ) -> AuditLine<'a> {
        AuditLine {
            request_id: "00000000deadbeef",
            client,
            peer: SocketAddr::from(([127, 0, 0, 1], 50000)),
            rule,
            method: "GET",
            path: "/contoso/_apis/projects",
            status: 200,
            request_bytes: 0,
            response_bytes: 344,
            duration_us: 812,
            upstream_us,
            outcome: "complete",
            replayed,
            would_deny: false,
        }
    }

    fn written(line: &AuditLine<'_>, format: LineFormat) -> String {
        let mut out = String::new();
        line.write_line(format, &mut out).expect("write");
        out
    }

    #[test]
    fn text_line_has_every_field_and_quotes_the_rule() {
        let client = Rendered::new("ci");
        let rule = Rendered::new(r#"GET /contoso/** "x\"#);
        let text = written(
            &line(&client, Some(&rule), Some(640), true),
            LineFormat::Text,
        );
        let (timestamp, rest) = text.split_once(' ').expect("timestamp first");
        assert!(
            humantime::parse_rfc3339(timestamp).is_ok(),
            "timestamp: {timestamp}"
        );
        assert_eq!(
            rest,
            concat!(
                " INFO audit: request_id=00000000deadbeef client=ci peer=127.0.0.1:50000 ",
                r#"rule="GET /contoso/** \"x\\" method=GET path=/contoso/_apis/projects "#,
                "status=200 request_bytes=0 response_bytes=344 duration_us=812 ",
                "upstream_us=640 outcome=complete replayed=true\n"
            )
        );
    }

    #[test]
    fn absent_fields_are_left_out() {
        let client = Rendered::new("ci");
        let text = written(&line(&client, None, None, false), LineFormat::Text);
        for absent in ["rule=", "upstream_us=", "replayed="] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        let json: serde_json::Value = serde_json::from_str(&written(
            &line(&client, None, None, false),
            LineFormat::Json,
        ))
        .expect("one JSON object");
        for absent in ["rule", "upstream_us", "replayed"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
    }

    #[test]
    fn json_line_is_one_object_with_typed_fields() {
        let client = Rendered::new("c\"i");
        let rule = Rendered::new("GET /contoso/**");
        let out = written(
            &line(&client, Some(&rule), Some(640), true),
            LineFormat::Json,
        );
        assert!(out.ends_with("}\n") && out.lines().count() == 1, "{out}");
        let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["target"], "audit");
        assert_eq!(json["request_id"], "00000000deadbeef");
        assert_eq!(json["client"], "c\"i");
        assert_eq!(json["peer"], "127.0.0.1:50000");
        assert_eq!(json["rule"], "GET /contoso/**");
        assert_eq!(json["path"], "/contoso/_apis/projects");
        assert_eq!(json["status"], 200);
        assert_eq!(json["response_bytes"], 344);
        assert_eq!(json["upstream_us"], 640);
        assert_eq!(json["outcome"], "complete");
        assert_eq!(json["replayed"], true);
    }

    proptest::proptest! {
        /// Whatever a client name or path holds (quotes, backslashes, newlines, control
        /// characters, any Unicode), a line stays one line, and the JSON line parses back to the
        /// same values.
        #[test]
        fn any_name_and_path_stay_one_line_and_round_trip(name in "\\PC{0,30}|[\"\\\n\r\t\u{0}-\u{1f}]{0,10}", path in "\\PC{0,60}") {
            let client = Rendered::new(&name);
            let mut record = line(&client, None, None, false);
            record.path = &path;
            let text = written(&record, LineFormat::Text);
            proptest::prop_assert_eq!(text.matches('\n').count(), 1, "{}", text);
            let json_line = written(&record, LineFormat::Json);
            proptest::prop_assert_eq!(json_line.matches('\n').count(), 1);
            let json: serde_json::Value = serde_json::from_str(&json_line).expect("valid JSON");
            proptest::prop_assert_eq!(json["client"].as_str(), Some(name.as_str()));
            proptest::prop_assert_eq!(json["path"].as_str(), Some(path.as_str()));
        }
    }
}
