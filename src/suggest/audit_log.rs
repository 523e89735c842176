//! Audit lines read back from the proxy's log, in either format `telemetry::log_format` writes:
//! text (`... INFO audit: client=ci method=GET path=/x status=200 ...`) or JSON (one object with
//! `"target":"audit"`). Anything else in the log (other targets, other programs' lines, a prefix a
//! log collector added before the line) is passed over, never an error: logs are messy.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// The fields of one audit line that say what a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCall {
    pub client: String,
    pub method: String,
    /// As logged: without the query, with a `/_host/{name}` prefix if the request had one.
    pub path: String,
    pub status: u16,
    /// The rule that admitted the request; `None` when the proxy refused it (or had no rule for it
    /// and forwarded it in learn mode).
    pub rule: Option<String>,
    /// Forwarded only because the client runs in learn mode (`learn=would_deny`).
    pub would_deny: bool,
}

/// The call an audit line records, or `None` for any other line.
pub fn parse_line(line: &str) -> Option<LoggedCall> {
    let line = line.trim_end_matches(['\n', '\r']);
    // A collector may prefix lines (`pod | {...}`); the JSON object is the rest of the line.
    if let Some(brace) = line.find('{')
        && let Ok(object) = serde_json::from_str::<Map<String, Value>>(&line[brace..])
    {
        return from_json(&object);
    }
    // The text format: timestamp, the level padded, `audit:`, then ` key=value` fields.
    const MARKER: &str = "INFO audit:";
    let at = line.find(MARKER)?;
    if at > 0 && !line[..at].ends_with(' ') {
        return None;
    }
    let fields = text_fields(&line[at + MARKER.len()..])?;
    call_from(|key| {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    })
}

fn from_json(object: &Map<String, Value>) -> Option<LoggedCall> {
    if object.get("target").and_then(Value::as_str) != Some("audit") {
        return None;
    }
    // Without the binary's audit sink, the line is an ordinary event whose message holds the
    // fields in the text format.
    if !object.contains_key("method")
        && let Some(message) = object.get("message").and_then(Value::as_str)
    {
        let fields = text_fields(message)?;
        return call_from(|key| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        });
    }
    call_from(|key| match object.get(key)? {
        Value::String(text) => Some(Cow::Borrowed(text.as_str())),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(flag) => Some(Cow::Owned(flag.to_string())),
        _ => None,
    })
}

fn call_from<'a>(field: impl Fn(&str) -> Option<Cow<'a, str>>) -> Option<LoggedCall> {
    Some(LoggedCall {
        client: field("client")?.into_owned(),
        method: field("method")?.into_owned(),
        path: field("path")?.into_owned(),
        status: field("status")?.parse().ok()?,
        rule: field("rule").map(Cow::into_owned),
        would_deny: field("learn").is_some_and(|learn| learn == "would_deny"),
    })
}

/// ` key=value` pairs; a value is bare, or double-quoted with backslash escapes (the simple
/// `\"` and `\\` of printable values, or Rust's `{:?}` escapes for the rest).
fn text_fields(mut rest: &str) -> Option<Vec<(&str, Cow<'_, str>)>> {
    let mut fields = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Some(fields);
        }
        let eq = rest.find('=')?;
        let key = &rest[..eq];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        rest = &rest[eq + 1..];
        let (value, after) = if rest.starts_with('"') {
            unquote(rest)?
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            (Cow::Borrowed(&rest[..end]), &rest[end..])
        };
        fields.push((key, value));
        rest = after;
    }
}

/// The quoted value at the start of `text` (which starts with `"`), and what follows it.
fn unquote(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(value), &text[at + 1..])),
            '\\' => {
                let (_, escaped) = chars.next()?;
                value.push(match escaped {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    '0' => '\0',
                    '\\' | '"' | '\'' => escaped,
                    'u' => {
                        if chars.next()?.1 != '{' {
                            return None;
                        }
                        let mut code = 0u32;
                        loop {
                            let (_, digit) = chars.next()?;
                            if digit == '}' {
                                break;
                            }
                            code = code.checked_mul(16)?.checked_add(digit.to_digit(16)?)?;
                        }
                        char::from_u32(code)?
                    }
                    _ => return None,
                });
            }
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::log_format::{LineFormat, Rendered};

    #[test]
    fn suggest_reads_text_and_json_audit_lines() {
        let text = concat!(
            "2026-12-06T10:00:00.000001Z  INFO audit: request_id=00000000deadbeef client=ci ",
            "peer=127.0.0.1:50000 rule=\"GET,POST /contoso/web/_git/web/**\" method=GET ",
            "path=/contoso/web/_git/web/info/refs status=200 request_bytes=0 response_bytes=344 ",
            "duration_us=812 upstream_us=640 outcome=complete learn=would_deny\n"
        );
        let call = parse_line(text).expect("an audit line");
        assert_eq!(call.client, "ci");
        assert_eq!(call.method, "GET");
        assert_eq!(call.path, "/contoso/web/_git/web/info/refs");
        assert_eq!(call.status, 200);
        assert_eq!(
            call.rule.as_deref(),
            Some("GET,POST /contoso/web/_git/web/**")
        );
        assert!(call.would_deny);
        let json = concat!(
            r#"{"timestamp":"2026-12-06T10:00:00.000001Z","level":"INFO","target":"audit","#,
            r#""request_id":"1","client":"c\"i","peer":"127.0.0.1:1","method":"POST","#,
            r#""path":"/_host/pkgs.dev.azure.com/contoso/_packaging/f/pypi/upload","status":403,"#,
            r#""request_bytes":0,"response_bytes":0,"duration_us":1,"outcome":"complete","learn":"would_deny"}"#
        );
        let call = parse_line(&format!("pod-7 | {json}")).expect("an audit line");
        assert_eq!(call.client, "c\"i");
        assert_eq!(call.status, 403);
        assert_eq!(call.rule, None);
        assert!(call.would_deny);
        for other in [
            "2026-12-06T10:00:00.000001Z  WARN ado_auth_proxy: token refresh failed status=500",
            r#"{"level":"INFO","target":"ado_auth_proxy","message":"listening"}"#,
            "",
            "garbage INFO audit: no fields here",
        ] {
            assert_eq!(parse_line(other), None, "{other}");
        }
    }

    #[test]
    fn suggest_reads_back_what_the_formatter_quotes() {
        for name in ["plain", "two words", "q\"uote\\", "new\nline\u{1}", "café"] {
            let rendered = Rendered::new(name);
            let mut out = String::new();
            LineFormat::Text
                .rendered_field(
                    &mut out,
                    crate::telemetry::log_format::Key::new(" client=", ",\"client\":"),
                    &rendered,
                )
                .expect("write");
            let line = format!("t  INFO audit:{out} method=GET path=/a status=200");
            assert_eq!(parse_line(&line).expect("parsed").client, name);
        }
    }
}
